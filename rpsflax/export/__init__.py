"""Export a trained workdir to where people run it: StableHLO (jax.export), a Keras 3 `.keras`
file, ONNX and a TensorFlow SavedModel, each with a manifest and a parity check measured at export
time. The command: `python -m rpsflax.export --workdir=W --format=F --output=PATH`
(docs/export.md). One module per format (to_<format>.py), each with the same five names:
SUFFIX, check, write, runner, interface.
"""

# --format names -> the module that writes them (imported on demand: the Keras/TF routes load
# TensorFlow, which the StableHLO route does not need).
FORMATS = {"stablehlo": "to_stablehlo", "keras": "to_keras", "onnx": "to_onnx",
           "savedmodel": "to_savedmodel"}
