"""The model: the TF Hub backbone (hub.py checks where it comes from, backbone.py loads it), the
trainable head (head.py), the exported classifier (export.py), the XNNPACK engine for frozen
models (lite.py) and the feature cache with the rule of when it applies (features.py)."""
