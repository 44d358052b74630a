"""One module per concern, each a Step (see ``sidecar/pipeline/step.py``)."""
