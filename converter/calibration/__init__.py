"""Calibration: data, activation statistics, range selection and the float transforms before quantization."""
