"""Export stage: SavedModel -> ONNX (tf2onnx) and TFLite variants, int8 calibration, TFLM C array.

Heavy imports (TensorFlow, tf2onnx, onnxruntime) happen inside the functions that need them.
"""
