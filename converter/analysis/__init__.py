"""Analysis on the host: float against int8 accuracy and per-layer errors."""
