"""Quantization: the int8 arithmetic, TFLite's quantizer with the recipe's ranges, the accuracy loop, QAT."""
