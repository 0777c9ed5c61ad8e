"""Refuse a SavedModel whose loading would run anything but provably harmless ops.

TensorFlow executes part of a SavedModel while loading it: ``TFLiteConverter.from_saved_model``
calls ``tf.saved_model.load`` (which runs the saver's restore op, the TF1 main/legacy-init op, the
table initializers, and the TF2 resources' ``_create_resource``/``_initialize`` functions and
saveables' restore functions), and its C++ MLIR importer runs the ``__saved_model_init_op``
session initializer. A hostile model can put ``WriteFile`` (or a ``PyFunc``) there and write a
``.pth`` into site-packages. So before TensorFlow sees the folder, this module parses
``saved_model.pb`` with the protobuf classes alone (nothing executes), walks every node that
would run at load time -- transitively through inputs, control inputs, function-call ops and
every func-typed attr (including functions bound inside another function's attrs, at any depth),
into ``graph_def.library`` functions (whose whole bodies count) -- and refuses any stateful op
outside ``SAFE_STATEFUL_OPS``, any op TensorFlow does not know, any ``RestoreV2`` except the
saver's own reading the filename the loader feeds, and, anywhere in the graph or its functions,
the ops in ``DANGEROUS_OPS`` (code, files, network).

It relies on TensorFlow internals, all checked on TensorFlow 2.21 (and the layouts written by
TF 2.16-2.21 and Keras 3 ``model.export``):

- ``saved_model.proto`` / ``meta_graph.proto`` (public protos), read by ``tfnative.protos`` from the
  descriptors TensorFlow's generated modules carry, or TensorFlow's own classes where that cannot be done;
- the C++ op registry (``_op_def_registry``, private): an op's ``OpDef.is_stateful``, looked up through the
  extension alone (``tfnative.extensions``) and, for an op it does not know, through TensorFlow's
  ``op_def_registry`` after importing TensorFlow (ops that only the full import registers);
- the load-time roots: collection keys ``saved_model_main_op``, ``legacy_init_op``,
  ``table_initializer``, ``local_init_op``, the ``local_variables`` initializers (TF1
  ``Scaffold.default_local_init_op``), the ``__saved_model_init_op`` signature, ``saver_def.restore_op_name``,
  and ``SavedObjectGraph`` resource children and ``saveable_objects`` (``saved_model/load.py``,
  ``load_v1_in_v2.py``, ``loader_impl.get_init_op``).

``tests/integration/test_load_safety.py`` fails when an upgrade changes any of this (a hostile
model stops being refused, or the real SavedModels stop converting).
"""

from __future__ import annotations

import importlib
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from converter.errors import ModelLoadError

# Stateful ops that may run while a SavedModel loads: variables, tables filled from tensors in
# the graph, control flow whose bodies are walked too, random initial values and asserts
# (``RestoreV2`` is not here: see ``RESTORE_OPS``). Nothing here reads or writes a path the
# model chooses, starts a process or talks to the network.
SAFE_STATEFUL_OPS = frozenset(
    {
        # variables
        "VarHandleOp",
        "_VarHandlesOp",
        "VariableV2",
        "Variable",
        "VarIsInitializedOp",
        "IsVariableInitialized",
        "ReadVariableOp",
        "_ReadVariablesOp",
        "AssignVariableOp",
        "AssignAddVariableOp",
        "AssignSubVariableOp",
        "Assign",
        "AssignAdd",
        "AssignSub",
        "DestroyResourceOp",
        # hash tables created and filled from in-graph tensors
        "HashTable",
        "HashTableV2",
        "MutableHashTable",
        "MutableHashTableV2",
        "MutableHashTableOfTensorsV2",
        "MutableDenseHashTableV2",
        "InitializeTable",
        "InitializeTableV2",
        "LookupTableImport",
        "LookupTableImportV2",
        "LookupTableInsertV2",
        "LookupTableFindV2",
        "LookupTableSizeV2",
        # calls and control flow: their functions are walked as well
        "StatefulPartitionedCall",
        "If",
        "While",
        "Case",
        # harmless side effects
        "RandomUniform",
        "RandomUniformInt",
        "RandomStandardNormal",
        "TruncatedNormal",
        "Assert",
    }
)

# Checkpoint reads, allowed at load time only inside the saver's restore op (``saver_def.restore_op_name``)
# and only when their prefix is the saver's filename tensor, which the loader feeds with the model's own
# variables/ folder. Anywhere else (a main_op, an init function) the prefix is a path the model chooses.
RESTORE_OPS = frozenset({"RestoreV2"})

# Ops refused anywhere in the graph, whether or not loading reaches them: they run Python, read or
# write files or talk to the network. SaveV2/MergeV2Checkpoints are not here: every SavedModel
# holds its saver's, which only run when someone saves (reaching them at load time is refused by
# the allowlist above).
DANGEROUS_OPS = {
    "PyFunc": "runs Python code stored with the model",
    "PyFuncStateless": "runs Python code stored with the model",
    "EagerPyFunc": "runs Python code stored with the model",
    "WriteFile": "writes a file",
    "ReadFile": "reads a file named by the model",
    "MatchingFiles": "lists files on this machine",
    "InitializeTableFromTextFile": "reads a file named by the model",
    "InitializeTableFromTextFileV2": "reads a file named by the model",
    "LoadAndRemapMatrix": "reads a checkpoint named by the model",
    "GenerateVocabRemapping": "reads files named by the model",
    "ImmutableConst": "maps a file named by the model into memory",
    "ImportEvent": "writes a summary file",
}
# Families of such ops, by name: summary writers, debug dumps, file readers and file/network datasets.
DANGEROUS_PATTERNS = (
    (re.compile(r"^Write.*Summary$|SummaryWriter|^Create.*Writer$|^(Flush|Close)SummaryWriter$"), "writes files"),
    (re.compile(r"^Debug"), "dumps tensors to files or network addresses"),
    (re.compile(r"Reader(V2)?$"), "reads files named by the model"),
    (re.compile(r"Rpc|^Collective|DataService|^_?(Send|Recv)$"), "talks to the network"),
    (
        re.compile(
            r"(TFRecord|TextLine|FixedLengthRecord|Snapshot|SaveDataset|CacheDataset|SqlDataset|CSVDataset|LMDB)"
        ),
        "reads or writes files",
    ),
)

RESTORE_WHY = (
    "reads a checkpoint from a path the model chooses (a RestoreV2 may run while loading only in the saver's "
    "restore op, reading the variables/ folder the loader names)"
)
# Ops that call the function in their attr ``f`` with their own inputs as its arguments.
_CALL_OPS = frozenset({"StatefulPartitionedCall", "PartitionedCall"})

_LOAD_TIME_COLLECTIONS = ("saved_model_main_op", "legacy_init_op", "table_initializer", "local_init_op")
INIT_SIGNATURE = "__saved_model_init_op"

ADVICE = (
    "edgeconv never runs a model's load-time ops it cannot prove harmless; re-export the model "
    "without init ops (e.g. model.export() of a plain Keras model), or give it as a Keras .keras "
    "file or a float .tflite"
)


@dataclass(frozen=True)
class _Op:
    """One node, where it lives (graph or library function) and its op type."""

    name: str
    op: str
    where: str
    node: Any


def _message(proto_file: str, full_name: str) -> Any:
    """A TensorFlow protobuf class, without importing TensorFlow where ``tfnative.protos`` can build it."""
    from converter.tfnative import protos

    try:
        return protos.message(proto_file, full_name)
    except protos.ProtoUnavailable:
        module = importlib.import_module(proto_file.removesuffix(".proto").replace("/", ".") + "_pb2")
        return getattr(module, full_name.rsplit(".", 1)[1])


def read_proto(path: Path) -> Any:
    """The SavedModel protobuf, parsed (binary or text) without TensorFlow running anything of it."""
    from google.protobuf import text_format
    from google.protobuf.message import DecodeError

    proto = _message("tensorflow/core/protobuf/saved_model.proto", "tensorflow.SavedModel")()
    binary, text = path / "saved_model.pb", path / "saved_model.pbtxt"
    try:
        if binary.is_file():
            proto.ParseFromString(binary.read_bytes())
        else:
            text_format.Parse(text.read_text(encoding="utf-8"), proto)
    except (OSError, DecodeError, text_format.ParseError, UnicodeDecodeError) as e:
        name = binary.name if binary.is_file() else text.name
        raise ModelLoadError(
            f"model: {path}: {name} is not a readable SavedModel ({e}); is the folder complete?"
        ) from e
    if not proto.meta_graphs:
        raise ModelLoadError(f"model: {path}: the SavedModel holds no MetaGraph; is the folder complete?")
    return proto


def _node_name(ref: str) -> str:
    """``^name``, ``name:1`` and ``name:output:0`` all name the node ``name``."""
    return ref.lstrip("^").split(":", 1)[0]


def _attr_funcs(value: Any) -> Iterator[str]:
    """Every function an attr value names, including those bound inside a function's own attrs, at any depth.

    ``f={name: g, attr: {b: func h}}`` runs ``h`` as well as ``g`` (``g`` calls its attr ``b``), and a list
    of funcs (``Case`` branches) may carry such bindings too.
    """
    kind = value.WhichOneof("value")
    funcs = [value.func] if kind == "func" else list(value.list.func) if kind == "list" else []
    for func in funcs:
        yield func.name
        for nested in func.attr.values():
            yield from _attr_funcs(nested)


def _func_names(attrs: Any) -> Iterator[str]:
    """Functions named anywhere in an attr map (a node's, or a function's own)."""
    for value in attrs.values():
        yield from _attr_funcs(value)


def _data_inputs(node: Any) -> list[str]:
    return [ref for ref in node.input if not ref.startswith("^")]


def _tensor(ref: str) -> str:
    """A graph input ref as ``name:index`` (``name`` means output 0)."""
    return ref if ":" in ref else f"{ref}:0"


def _dangerous(node: Any) -> str | None:
    """Why an op is refused wherever it is, or None."""
    op = node.op
    if op in DANGEROUS_OPS:
        return DANGEROUS_OPS[op]
    if op == "PrintV2":
        stream = node.attr["output_stream"].s.decode(errors="replace") if "output_stream" in node.attr else ""
        return f"prints to '{stream}', a file" if stream.startswith("file://") else None
    return next((why for pattern, why in DANGEROUS_PATTERNS if pattern.search(op)), None)


class _OpDefs:
    """``OpDef`` by op name: from the C++ registry alone, else from TensorFlow's ``op_def_registry``.

    Loading the registry's extension registers the ops of TensorFlow's core library; an op it does not know
    is looked up again after importing TensorFlow (which registers every op), so a verdict never depends on
    which of the two answered.
    """

    MODULE = "tensorflow.python.framework._op_def_registry"

    def __init__(self) -> None:
        from converter.tfnative import extensions

        native = None
        if extensions.load(extensions.CONVERTER_API, "Convert") is not None:
            native = extensions.load(self.MODULE, "get")  # the op registrations come with the converter's library
        self.native = native
        self.op_def = _message("tensorflow/core/framework/op_def.proto", "tensorflow.OpDef") if native else None
        self.known: dict[str, Any] = {}

    def get(self, name: str) -> Any:
        if name in self.known:
            return self.known[name]
        raw = self.native.get(name) if self.native is not None else None
        if raw is not None and self.op_def is not None:
            found = self.op_def.FromString(raw)
        else:
            from tensorflow.python.framework import op_def_registry

            found = op_def_registry.get(name)
        self.known[name] = found
        return found


class _MetaGraphCheck:
    """The checks for one MetaGraph."""

    def __init__(self, path: Path, meta_graph: Any) -> None:
        self.path = path
        self.meta = meta_graph
        self.registry = _OpDefs()
        self.nodes = {n.name: n for n in meta_graph.graph_def.node}
        self.functions = {f.signature.name: f for f in meta_graph.graph_def.library.function}

    def all_ops(self) -> Iterator[_Op]:
        for node in self.meta.graph_def.node:
            yield _Op(node.name, node.op, "the graph", node)
        for fname, function in self.functions.items():
            for node in function.node_def:
                yield _Op(node.name, node.op, f"function {fname}", node)

    def refuse(self, op: _Op, why: str, at_load: bool = False) -> ModelLoadError:
        when = " that would run while loading" if at_load else ""
        return ModelLoadError(
            f"model: {self.path}: refused: the SavedModel has a {op.op} op{when} (node '{op.name}' in {op.where}), "
            f"which {why}; {ADVICE}"
        )

    def check_everywhere(self) -> None:
        for op in self.all_ops():
            why = _dangerous(op.node)
            if why:
                raise self.refuse(op, why)

    def load_time_roots(self) -> tuple[list[str], list[str]]:
        """Graph node names and library function names that TensorFlow runs while loading.

        The saver's restore op is a root too, walked apart by ``check_load_time`` (it may restore).
        """
        nodes: list[str] = []
        functions: list[str] = []
        for key in _LOAD_TIME_COLLECTIONS:
            if key in self.meta.collection_def:
                nodes.extend(self.meta.collection_def[key].node_list.value)
        if "local_variables" in self.meta.collection_def:
            variable_def = _message("tensorflow/core/framework/variable.proto", "tensorflow.VariableDef")
            for raw in self.meta.collection_def["local_variables"].bytes_list.value:
                var = variable_def()
                var.ParseFromString(raw)
                nodes.extend(n for n in (var.initializer_name, var.snapshot_name) if n)
        if INIT_SIGNATURE in self.meta.signature_def:
            nodes.extend(t.name for t in self.meta.signature_def[INIT_SIGNATURE].outputs.values())
        objects = self.meta.object_graph_def.nodes

        def object_functions(index: int) -> Iterable[str]:
            obj = objects[index] if 0 <= index < len(objects) else None
            if obj is None:
                return ()
            kind = obj.WhichOneof("kind")
            if kind == "function":
                children = (f for c in obj.children for f in object_functions(c.node_id))
                return [*obj.function.concrete_functions, *children]
            if kind == "bare_concrete_function":
                return [obj.bare_concrete_function.concrete_function_name]
            return ()

        for obj in objects:
            if obj.WhichOneof("kind") == "resource":
                for child in obj.children:
                    functions.extend(object_functions(child.node_id))
            for saveable in obj.saveable_objects.values():
                functions.extend(object_functions(saveable.restore_function))
        return nodes, functions

    def check_load_time(self) -> None:
        """Walk what loading runs; refuse unknown ops and stateful ops outside the allowlist.

        The walk from the saver's restore op carries where the loader's filename feed flows (the
        graph tensor ``saver_def.filename_tensor_name``, then the function arguments it is passed to),
        so that a ``RestoreV2`` is allowed there only when it reads that feed.
        """
        node_roots, function_roots = self.load_time_roots()
        restore_root = _node_name(self.meta.saver_def.restore_op_name)
        filename = _tensor(self.meta.saver_def.filename_tensor_name) if self.meta.saver_def.filename_tensor_name else ""
        seen_nodes: set[tuple[str, bool]] = set()
        seen_functions: set[tuple[str, frozenset[str]]] = set()
        pending_nodes = [(_node_name(n), False) for n in node_roots]
        if restore_root:  # without a filename tensor nothing is fed, and no RestoreV2 is allowed
            pending_nodes.append((restore_root, bool(filename)))
        pending_functions: list[tuple[str, frozenset[str]]] = [(f, frozenset()) for f in function_roots]
        while pending_nodes or pending_functions:
            if pending_nodes:
                name, restoring = pending_nodes.pop()
                if (name, restoring) in seen_nodes:
                    continue
                seen_nodes.add((name, restoring))
                node = self.nodes.get(name)
                if node is None:
                    raise ModelLoadError(
                        f"model: {self.path}: the SavedModel's load-time op '{name}' is not in its graph; "
                        "the file is corrupt or hand-made"
                    )
                fed = {i for i, ref in enumerate(_data_inputs(node)) if restoring and _tensor(ref) == filename}
                pending_functions.extend(self.check_op(_Op(name, node.op, "the graph", node), fed))
                pending_nodes.extend((_node_name(i), restoring) for i in node.input)
            else:
                fname, filename_args = pending_functions.pop()
                if (fname, filename_args) in seen_functions:
                    continue
                seen_functions.add((fname, filename_args))
                function = self.functions.get(fname)
                if function is None:
                    raise ModelLoadError(
                        f"model: {self.path}: the SavedModel calls function '{fname}' at load time, which is not "
                        "in its library; the file is corrupt or hand-made"
                    )
                pending_functions.extend((f, frozenset()) for f in _func_names(function.attr))
                for node in function.node_def:
                    # inside a function body a plain name (no ':') is one of the function's arguments
                    fed = {i for i, ref in enumerate(_data_inputs(node)) if ref in filename_args}
                    pending_functions.extend(self.check_op(_Op(node.name, node.op, f"function {fname}", node), fed))

    def _called(self, node: Any) -> str | None:
        """The library function a node calls with its own inputs as arguments, or None."""
        if node.op in self.functions:
            return str(node.op)
        if node.op in _CALL_OPS and "f" in node.attr and node.attr["f"].WhichOneof("value") == "func":
            return str(node.attr["f"].func.name)
        return None

    def check_op(self, op: _Op, fed: set[int]) -> list[tuple[str, frozenset[str]]]:
        """Check one load-time op; return the functions it runs, each with its arguments that hold the filename feed.

        ``fed`` are the positions of the op's data inputs that carry the loader's filename feed (empty
        outside the saver's restore op). Every function named in any attr, at any depth, is walked.
        """
        called = self._called(op.node)
        functions: list[tuple[str, frozenset[str]]] = []
        if called is not None:
            signature = self.functions[called].signature if called in self.functions else None
            args = [a.name for a in signature.input_arg] if signature is not None else []
            functions.append((called, frozenset(args[i] for i in fed if i < len(args))))
        calls_f = op.op in _CALL_OPS and called is not None
        for value_key, value in op.node.attr.items():
            if value_key == "f" and calls_f:  # the called function itself is added above, with its arguments
                functions.extend((f, frozenset()) for f in _func_names(value.func.attr))
            else:
                functions.extend((f, frozenset()) for f in _attr_funcs(value))
        if op.op in self.functions:  # a direct call of a library function
            return functions
        why = _dangerous(op.node)
        if why:
            raise self.refuse(op, why, at_load=True)
        op_def = self.registry.get(op.op)
        if op_def is None:
            raise self.refuse(op, "is not an op this TensorFlow knows (a custom op could do anything)", at_load=True)
        if op.op in RESTORE_OPS:
            if 0 not in fed:
                raise self.refuse(op, RESTORE_WHY, at_load=True)
        elif op_def.is_stateful and op.op not in SAFE_STATEFUL_OPS:
            raise self.refuse(
                op, "is stateful and not on edgeconv's list of ops known to be harmless at load time", at_load=True
            )
        return functions


def check_saved_model(path: Path, proto: Any | None = None) -> None:
    """Raise ``ModelLoadError`` unless loading the SavedModel at ``path`` can only run harmless ops.

    Needs TensorFlow installed (its protobuf descriptors and op registry) but executes nothing of the model;
    TensorFlow itself is imported only for an op its core library does not register.
    """
    proto = read_proto(path) if proto is None else proto
    for meta_graph in proto.meta_graphs:
        check = _MetaGraphCheck(path, meta_graph)
        check.check_load_time()  # first: "would run while loading" is the more useful message
        check.check_everywhere()
