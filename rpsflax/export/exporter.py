"""The body of `python -m rpsflax.export`: check the flags, load the workdir, write the artifact
in a hidden folder, run it in its own runtime against rpsflax.predict, write the manifest, and
only then put both in place."""

import importlib
import json

from absl import logging

from rpsflax import report
from rpsflax.errors import ExportError
from rpsflax.export import FORMATS, manifest, output, parity, source as source_lib

CHECKPOINTS = ("best", "latest")


def format_module(fmt: str):
  if fmt not in FORMATS:
    raise ExportError(f"--format={fmt!r}: use one of {', '.join(FORMATS)}")
  return importlib.import_module(f"rpsflax.export.{FORMATS[fmt]}")


def export(workdir, fmt: str, out, *, which: str = "best", images=(), count: int = parity.DEFAULT_COUNT,
           max_diff: float | None = None, options: dict | None = None) -> dict:
  """Write `out` and `out`.manifest.json; return the manifest."""
  options = dict(options or {}, format=fmt)
  module = format_module(fmt)
  if which not in CHECKPOINTS:
    raise ExportError(f"--checkpoint={which!r}: use one of {', '.join(CHECKPOINTS)}")
  if not count >= 1:
    raise ExportError(f"--parity_images={count}: use at least 1")
  if max_diff is None:
    max_diff = module.DEFAULT_MAX_DIFF
  path = output.check(out, module.SUFFIX)
  source_lib.check_workdir(workdir, which)
  module.check(report.read_config(workdir), options)  # before the slow part: loading, tracing
  src = source_lib.load(workdir, which)
  batch, image_info = parity.pick_images(src.config, images, count)
  reference = src.probabilities(batch)
  with output.staged(path) as (artifact, manifest_path):
    module.write(src, artifact, options)
    figures = parity.measure(module.runner(artifact, src, options), batch, reference,
                             src.class_names)
    logging.info("%s parity on %d %s image(s): max |p - p_predict| = %.3g (bound %g), "
                 "%d/%d labels agree", fmt, figures["count"], image_info["source"],
                 figures["max_abs_diff"], max_diff, figures["labels_agree"], figures["count"])
    parity.check(figures, max_diff, fmt, path)
    interface = module.interface(src, options)
    interface["preprocessing"] = manifest.preprocessing(src.config, module.PREPROCESSING_INSIDE)
    content = manifest.build(src, fmt, path, interface=interface, images=image_info,
                             parity=figures, bound=max_diff)
    text = manifest.dumps(content)
    manifest_path.write_text(text)
    output.publish(artifact, manifest_path, path)
  logging.info("wrote %s and %s", path, manifest.path_for(path))
  return json.loads(text)  # as a reader of the file sees it
