"""The .tflite flatbuffer: its schema, reading and editing it without TensorFlow, and op facts."""
