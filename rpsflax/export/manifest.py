"""The manifest written beside every export (`<output>.manifest.json`): what goes in, what comes
out, the preprocessing and where it happens, the run and checkpoint it came from, and the parity
measured at export time. Everything a user of the artifact needs, without this package."""

import datetime
import importlib.metadata
import json
import pathlib

from rpsflax import preprocess, report

FORMAT = "rpsflax-export/1"
SUFFIX = ".manifest.json"

# Keras' preprocessing mode (preprocess.PREPROCESS_MODES of config.preprocess) -> the Keras
# function that does it, and what it does (the caller's job for --format=keras; inside the model
# for the others). Each application's own preprocess_input is this function in its mode.
PREPROCESSING = {
    "caffe": ("keras.applications.imagenet_utils.preprocess_input(x, mode='caffe')",
              "caffe mode: float32, RGB -> BGR, minus the ImageNet BGR mean "
              "[103.939, 116.779, 123.68], no scaling"),
    "tf": ("keras.applications.imagenet_utils.preprocess_input(x, mode='tf')",
           "tf mode: float32, x / 127.5 - 1 (pixels to [-1, 1]), RGB kept"),
    "rescale": ("x * np.float32(1 / 255)",
                "float32, x * (1/255) (pixels to [0, 1]), as ImageDataGenerator(rescale=1./255)"),
    "none": ("np.float32(x)", "float32 pixels in [0, 255], nothing else"),
}
_VERSIONED = ("rpsflax", "jax", "flax", "keras", "tensorflow", "tf2onnx", "onnx", "onnxruntime")


def path_for(output) -> pathlib.Path:
  output = pathlib.Path(output)
  return output.with_name(output.name + SUFFIX)


def preprocessing(config, inside: bool) -> dict:
  name = config.preprocess
  mode = preprocess.PREPROCESS_MODES[name]
  keras_fn, what = PREPROCESSING[mode]
  return {"name": name, "mode": mode, "inside_model": inside, "what": what,
          "keras_function": keras_fn}


def _versions() -> dict:
  out = {}
  for name in _VERSIONED:
    try:
      out[name] = importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
      pass
  return out


def build(source, fmt: str, output, *, interface: dict, images: dict, parity: dict,
          bound: float) -> dict:
  """The manifest's content. `interface` (from the format): input, output, preprocessing,
  runtime and how to load it."""
  config, meta = source.config, source.meta
  return {
      "format": FORMAT,
      "export_format": fmt,
      "artifact": pathlib.Path(output).name,
      "created_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
      "class_names": source.class_names,
      **interface,
      "model": {"name": config.model.name, "alpha": float(config.model.alpha),
                "dtype": config.model.dtype, "head": report.config_to_dict(config.head)},
      # The checkpoint as eval.json and predict record it (which, epoch, step, path).
      "source": {"workdir": str(source.workdir), "checkpoint": meta.checkpoint_record(),
                 "val_accuracy": meta.val_accuracy},
      "parity": {"reference": "rpsflax.predict's probabilities (JAX, the workdir's checkpoint)",
                 "images": images, "bound": bound, **parity},
      "versions": _versions(),
  }


def dumps(manifest: dict) -> str:
  return json.dumps(manifest, indent=2) + "\n"
