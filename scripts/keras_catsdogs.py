r"""The Keras cats-vs-dogs tutorial's recipe on a folder, timed per epoch: the peer that
`python -m rpsflax.main --config=configs/catsdogs.py` is measured against end to end.

  python scripts/keras_catsdogs.py --data_dir=../shared/data/catsdogs_filtered/train \
      --epochs=30 --out=keras_catsdogs.json

The tutorial's model (Conv/MaxPool x4, Flatten, Dropout 0.5, Dense 512, Dense 1 sigmoid),
RMSprop(1e-4), binary cross-entropy, ImageDataGenerator(rescale=1/255, rotation 40, shifts 0.2,
shear 0.2, zoom 0.2, horizontal flips, 'nearest') at 150x150, flow_from_directory(class_mode=
'binary'). The same batch size as configs/catsdogs.py (128) and a validation split of the same
folder (`--validation_split`, Keras' own: the last fraction of each class, unaugmented). Writes
one JSON object: seconds per epoch, total wall time, accuracy curves.
"""

import argparse
import os
import sys
import time

from rpsflax import report

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def build_model(keras, size: int):
  L = keras.layers
  model = keras.Sequential([
      keras.Input((size, size, 3)),
      L.Conv2D(32, (3, 3), activation="relu"), L.MaxPooling2D((2, 2)),
      L.Conv2D(64, (3, 3), activation="relu"), L.MaxPooling2D((2, 2)),
      L.Conv2D(128, (3, 3), activation="relu"), L.MaxPooling2D((2, 2)),
      L.Conv2D(128, (3, 3), activation="relu"), L.MaxPooling2D((2, 2)),
      L.Flatten(), L.Dropout(0.5), L.Dense(512, activation="relu"),
      L.Dense(1, activation="sigmoid"),
  ])
  model.compile(loss="binary_crossentropy", optimizer=keras.optimizers.RMSprop(1e-4),
                metrics=["accuracy"])
  return model


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--data_dir", required=True, help="a folder of class subfolders (cats/, dogs/)")
  p.add_argument("--epochs", type=int, default=30)
  p.add_argument("--batch_size", type=int, default=128)
  p.add_argument("--image_size", type=int, default=150)
  p.add_argument("--validation_split", type=float, default=0.25)
  p.add_argument("--out", default="", help="also write the JSON object here")
  args = p.parse_args(argv)
  if not os.path.isdir(args.data_dir):
    print(f"error: --data_dir={args.data_dir!r} is not a folder", file=sys.stderr)
    return 2
  t_start = time.perf_counter()
  # Imported inside the timed region, as the tutorial's wall time includes Keras' import.
  import keras  # noqa: PLC0415
  from keras.src.legacy.preprocessing.image import ImageDataGenerator  # noqa: PLC0415

  size = (args.image_size, args.image_size)
  common = dict(rescale=1.0 / 255, validation_split=args.validation_split)
  train_gen = ImageDataGenerator(rotation_range=40, width_shift_range=0.2, height_shift_range=0.2,
                                 shear_range=0.2, zoom_range=0.2, horizontal_flip=True,
                                 fill_mode="nearest", **common)
  flow = dict(target_size=size, batch_size=args.batch_size, class_mode="binary", seed=0)
  train = train_gen.flow_from_directory(args.data_dir, subset="training", **flow)
  val = ImageDataGenerator(**common).flow_from_directory(args.data_dir, subset="validation",
                                                          shuffle=False, **flow)
  model = build_model(keras, args.image_size)

  class EpochTimes(keras.callbacks.Callback):
    def on_epoch_begin(self, epoch, logs=None):
      self.t0 = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
      times.append(time.perf_counter() - self.t0)

  times: list[float] = []
  history = model.fit(train, epochs=args.epochs, validation_data=val, verbose=2,
                      callbacks=[EpochTimes()])
  out = {"recipe": "keras cats-vs-dogs tutorial", "data_dir": args.data_dir,
         "num_train": train.samples, "num_val": val.samples, "epochs": args.epochs,
         "batch_size": args.batch_size, "epoch_seconds": times,
         "wall_seconds": time.perf_counter() - t_start,
         "history": {k: [float(v) for v in vs] for k, vs in history.history.items()},
         "best_val_accuracy": max(history.history["val_accuracy"]),
         "keras_version": keras.__version__, "backend": keras.backend.backend()}
  report.print_json(out, args.out)
  return 0


if __name__ == "__main__":
  sys.exit(main())
