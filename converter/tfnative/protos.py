"""TensorFlow's protobuf classes without importing TensorFlow.

Every generated ``*_pb2.py`` module in the wheel carries its ``.proto`` file as a serialized
``FileDescriptorProto`` literal, and importing any of them imports the ``tensorflow`` package first. Here the
literal is read from the module's source (parsed, never executed) and added, dependencies first, to a pool
of our own, from which protobuf builds the message classes: the same fields, numbers and wire format as
TensorFlow's classes, so a message parses and serializes to the same bytes. A private pool keeps them apart
from TensorFlow's own registrations when ``tensorflow`` is imported later in the same process.
"""

from __future__ import annotations

import ast
import functools
import importlib
import threading
from pathlib import Path
from typing import Any

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

from converter.tfnative.extensions import package_folder

_LOCK = threading.Lock()


class ProtoUnavailable(ImportError):
    """A ``.proto`` file the installed TensorFlow does not ship as a generated module we can read."""


@functools.cache
def _pool() -> descriptor_pool.DescriptorPool:
    return descriptor_pool.DescriptorPool()


def _serialized(proto_file: str) -> bytes:
    """The ``FileDescriptorProto`` bytes of ``proto_file`` (a path such as ``tensorflow/core/x.proto``)."""
    if proto_file.startswith("google/protobuf/"):
        module = importlib.import_module("google.protobuf." + Path(proto_file).stem + "_pb2")
        return bytes(module.DESCRIPTOR.serialized_pb)
    folder = package_folder()
    if folder is None or not proto_file.endswith(".proto"):
        raise ProtoUnavailable(f"no TensorFlow installed to read {proto_file} from")
    generated = folder.parent / (proto_file[: -len(".proto")] + "_pb2.py")
    try:
        tree = ast.parse(generated.read_text(encoding="utf-8"))
    except (OSError, SyntaxError, UnicodeDecodeError) as e:
        raise ProtoUnavailable(f"{generated}: {e}") from e
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and node.func.attr == "AddSerializedFile"
            and node.args
            and isinstance(node.args[0], ast.Constant)
            and isinstance(node.args[0].value, bytes)
        ):
            return node.args[0].value
    raise ProtoUnavailable(f"{generated} carries no serialized descriptor")


def _add(proto_file: str) -> None:
    pool = _pool()
    try:
        pool.FindFileByName(proto_file)
        return
    except KeyError:
        pass
    serialized = _serialized(proto_file)
    for dependency in descriptor_pb2.FileDescriptorProto.FromString(serialized).dependency:
        _add(dependency)
    pool.AddSerializedFile(serialized)  # what generated modules call; every protobuf release has it


def message(proto_file: str, full_name: str) -> Any:
    """The class of message ``full_name`` (``tensorflow.SavedModel``) defined in ``proto_file``.

    Raises ``ProtoUnavailable`` where the installed TensorFlow does not ship it readably.
    """
    with _LOCK:
        _add(proto_file)
        try:
            return message_factory.GetMessageClass(_pool().FindMessageTypeByName(full_name))
        except KeyError as e:
            raise ProtoUnavailable(f"{proto_file} defines no {full_name}") from e
