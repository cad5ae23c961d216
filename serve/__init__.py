"""Serve stage: onnxruntime / LiteRT over the verified bundle. Never imports tensorflow or keras."""
