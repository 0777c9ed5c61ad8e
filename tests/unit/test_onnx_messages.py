"""onnx2tf's failures are explained by what onnx2tf itself said: the ONNX node and the exception's sentence."""

from __future__ import annotations

from converter.sources.load_onnx import toolkit_reason

# onnx2tf 1.29.24's stderr for an Add of [5, 9] and [1, 4] (abridged: the traceback's middle frames cut).
LOG = """\
\x1b[31mERROR:\x1b[0m The trace log is below.
Traceback (most recent call last):
  File "/venv/lib/python3.11/site-packages/tf_keras/src/utils/traceback_utils.py", line 72, in error_handler
    del filtered_tb
ValueError: Exception encountered when calling layer "tf.math.add_1" (type TFOpLambda).

Dimensions must be equal, but are 9 and 4 for '{{node tf.math.add_1/Add}} = AddV2[T=DT_FLOAT](Placeholder, y)' \
with input shapes: [5,9], [1,4].

Call arguments received by layer "tf.math.add_1" (type TFOpLambda):
  \u2022 x=tf.Tensor(shape=(5, 9), dtype=float32)
  \u2022 name='sng_Add_0'
\x1b[31mERROR:\x1b[0m input_onnx_file_path: /tmp/work/model.onnx
\x1b[31mERROR:\x1b[0m onnx_op_name: sng_Add_0
\x1b[31mERROR:\x1b[0m Read this and deal with it. https://github.com/PINTO0309/onnx2tf#parameter-replacement
\x1b[31mERROR:\x1b[0m Alternatively, if the input OP has a dynamic dimension, use the -b or -ois option.
"""


def test_the_reason_names_the_node_and_the_exceptions_sentence() -> None:
    reason = toolkit_reason(LOG, "ValueError:   \u2022 name='sng_Add_0'")
    assert reason.startswith("at ONNX node 'sng_Add_0': ValueError: Exception encountered when calling layer")
    assert "Dimensions must be equal, but are 9 and 4" in reason
    assert "\u2022" not in reason and "Read this" not in reason and "\x1b" not in reason


def test_without_a_log_the_workers_own_words_stay() -> None:
    assert toolkit_reason("", "RuntimeError: onnx2tf gave up (exit 1) without a message") == (
        "RuntimeError: onnx2tf gave up (exit 1) without a message"
    )


def test_an_error_line_of_onnx2tf_is_the_reason_when_no_exception_is_printed() -> None:
    log = "\x1b[31mERROR:\x1b[0m onnx_op_name: /conv/Conv\n\x1b[31mERROR:\x1b[0m Unsupported: auto_pad SAME_LOWER\n"
    assert toolkit_reason(log, "x") == "at ONNX node '/conv/Conv': Unsupported: auto_pad SAME_LOWER"
