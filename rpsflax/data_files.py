"""Image folders without TensorFlow: listing, layouts, labels, readability, seeded splits.

Two layouts are read, detected per split folder:
  classes  DIR/<split>/<class>/**/*.jpg   (flow_from_directory, cats_and_dogs_filtered)
  flat     DIR/<split>/cat.123.jpg        (Kaggle; the class is the file name's leading letters,
                                           so `paper3.png` and `rock-hires1.png` work too)
Splits are `train` plus `validation` (or `valid`/`val`, else a labelled `test`); DIR itself may
be the train folder. Classes are sorted alphabetically, as Keras sorts class folders.

Every image is opened with PIL before training (in a thread pool: PIL releases the GIL while
decoding); unreadable files are skipped and reported, never fatal. Splits (holdout first, then
validation) are seeded, written to workdir/splits/<split>.txt as `path<TAB>label`, and reused
on the next start so a resumed run sees the same examples and the holdout never leaks.
"""

import concurrent.futures
import dataclasses
import json
import os
import pathlib
import re
from typing import Optional, Sequence

from absl import logging
import numpy as np
from PIL import Image
from tqdm import tqdm

from rpsflax import atomic
from rpsflax.errors import DataError

# config.data.resize_method: Keras / PIL interpolation names -> tf.image.resize methods
# (antialiased, as PIL is). 'box' and 'hamming' have no TF equivalent close to PIL's.
RESIZE_METHODS = {"nearest": "nearest", "bilinear": "bilinear", "bicubic": "bicubic",
                  "lanczos": "lanczos3", "lanczos3": "lanczos3", "lanczos5": "lanczos5",
                  "area": "area", "mitchellcubic": "mitchellcubic", "gaussian": "gaussian"}
# config.data.device_cache: whether the decoded data lives on the devices (rpsflax/resident.py).
DEVICE_CACHE_MODES = ("auto", "on", "off")
DECODERS = ("pil", "tf")  # config.data.decoder: PIL (no TensorFlow import) or tf.data

IMAGE_EXTENSIONS = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".gif"})
VALIDATION_DIRS = ("validation", "valid", "val")
SPLIT_NAMES = ("train", "validation", "holdout", "test")
SPLITS_DIR = "splits"
REPORT_FILE = "data_report.json"
TFDS_PREFIX = "tfds:"
# Seed-sequence tags, so each seeded draw has its own stream.
_HOLDOUT_TAG, _VALIDATION_TAG, EPOCH_TAG = 1, 2, 3
# Pixels an image may declare in its header (config.data.max_image_pixels): checked before any
# decoding. PIL refuses above twice its own MAX_IMAGE_PIXELS whatever this says (a bomb).
DEFAULT_MAX_IMAGE_PIXELS = 89_478_485  # PIL's warning threshold: 256 MiB as RGB
MAX_IMAGE_PIXELS_CEILING = 2 * Image.MAX_IMAGE_PIXELS
_LAYOUT_HELP = ("expected DIR/train/<class>/*.jpg (class folders, as flow_from_directory), "
                "DIR/train/cat.123.jpg (flat, class = file name prefix), or DIR itself in one of "
                "these layouts; optional DIR/validation (or valid/val/test) beside train")



# ---------------------------------------------------------------------------------------------
# Listing.

def is_image_name(name: str) -> bool:
  """An image file name we read: known extension (any case), not hidden."""
  return not name.startswith(".") and os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS


def _hidden(name: str) -> bool:
  return name.startswith(".") or name == "__MACOSX"


def _walk_images(folder: str) -> list[str]:
  """Image files under `folder`, following folder symlinks, each real folder once (a symlink
  back to a parent would otherwise list the same files again and again)."""
  out, seen = [], set()
  for root, dirs, files in os.walk(folder, followlinks=True):
    st = os.stat(root)
    if (st.st_dev, st.st_ino) in seen:
      logging.warning("%s is a folder already listed (a symlink loop?): not listed again", root)
      dirs[:] = []
      continue
    seen.add((st.st_dev, st.st_ino))
    dirs[:] = [d for d in dirs if not _hidden(d)]
    out.extend(os.path.join(root, f) for f in files if is_image_name(f))
  return sorted(out)


def list_images(paths) -> list[str]:
  """Image files named by `paths` (a path or a list): files as given, folders recursively.

  Sorted within each folder, in the order given; duplicates dropped. A missing path is a
  DataError. Files given explicitly are kept whatever their extension (the reader decides).
  """
  if isinstance(paths, (str, os.PathLike)):
    paths = [paths]
  out, seen = [], set()
  for p in paths:
    p = os.fspath(p)
    if os.path.isdir(p):
      found = _walk_images(p)
    elif os.path.isfile(p):
      found = [p]
    else:
      raise DataError(f"{p}: no such file or folder")
    for f in found:
      if f not in seen:
        seen.add(f)
        out.append(f)
  return out


def class_from_filename(name: str) -> Optional[str]:
  """The class a flat-layout file name encodes: its leading letters (`cat.1.jpg` -> 'cat')."""
  m = re.match(r"[A-Za-z]+", os.path.basename(name))
  return m.group(0) if m else None


@dataclasses.dataclass
class FolderListing:
  """The labelled image files of one split folder."""
  path: str
  layout: str                 # 'classes' | 'flat' | 'unlabelled' | 'empty'
  files: list[str]            # sorted
  classes: list[str]          # class name of each file
  class_dirs: list[str]       # 'classes' layout: every class folder (empty ones too)
  ignored: list[str]          # image files we cannot label (loose files, no prefix)

  @property
  def class_names(self) -> list[str]:
    return sorted(set(self.class_dirs) | set(self.classes))


def list_folder(path: str) -> FolderListing:
  """List one split folder, detecting its layout.

  Class subfolders holding images win (loose images beside them are ignored, as Keras
  ignores them); else image files directly inside, labelled by their name prefix.
  """
  path = os.fspath(path)
  entries = sorted(os.listdir(path))
  subdirs = [e for e in entries if not _hidden(e) and os.path.isdir(os.path.join(path, e))]
  loose = [os.path.join(path, e) for e in entries
           if is_image_name(e) and os.path.isfile(os.path.join(path, e))]
  per_dir = {d: _walk_images(os.path.join(path, d)) for d in subdirs}
  if subdirs and (any(per_dir.values()) or not loose):
    files, classes = [], []
    for d in subdirs:
      files += per_dir[d]
      classes += [d] * len(per_dir[d])
    layout = "classes" if files else "empty"
    return FolderListing(path, layout, files, classes, subdirs if files else [], loose)
  files, classes, ignored = [], [], []
  for f in loose:
    c = class_from_filename(f)
    if c is None:
      ignored.append(f)
    else:
      files.append(f)
      classes.append(c)
  layout = "flat" if files else ("unlabelled" if ignored else "empty")
  return FolderListing(path, layout, files, classes, [], ignored)


def _child(folder: str, names: Sequence[str]) -> Optional[str]:
  """The first child folder of `folder` whose name is in `names` (case-insensitive)."""
  children = {e.lower(): e for e in sorted(os.listdir(folder))
              if os.path.isdir(os.path.join(folder, e))}
  for n in names:
    if n in children:
      return os.path.join(folder, children[n])
  return None


def find_split_folders(data_dir: str) -> dict[str, FolderListing]:
  """{'train': ..., 'validation': ..., 'test': ...} listings for a data folder.

  DIR/train (+ validation/valid/val, test) when DIR has a train folder, else DIR is the
  train folder. An unlabelled test folder (Kaggle's `test/1.jpg`) is left out: it is for
  prediction. A labelled test folder is the validation split when there is no other.
  """
  data_dir = os.fspath(data_dir)
  if not os.path.exists(data_dir):
    raise DataError(f"data folder {data_dir} does not exist: fix --config.data.dir "
                    f"({_LAYOUT_HELP})")
  if not os.path.isdir(data_dir):
    raise DataError(f"config.data.dir={data_dir} is a file, not a folder ({_LAYOUT_HELP})")
  train = _child(data_dir, ("train",))
  out = {"train": list_folder(train or data_dir)}
  if train is None:
    return out
  val, test = _child(data_dir, VALIDATION_DIRS), _child(data_dir, ("test",))
  if val:
    out["validation"] = list_folder(val)
  if test:
    listing = list_folder(test)
    if listing.layout in ("classes", "flat"):
      out["test" if val else "validation"] = listing
    else:
      logging.info("%s holds no labelled images (%s): not used as a split; predict on it "
                   "with rpsflax.predict", test, listing.layout)
  return out


# ---------------------------------------------------------------------------------------------
# Readability.

@dataclasses.dataclass(frozen=True)
class ImageInfo:
  format: str    # PIL format: 'JPEG', 'PNG', 'GIF', 'BMP', ...
  mode: str      # PIL mode before any conversion: 'RGB', 'RGBA', 'L', 'P', 'I;16', 'CMYK', ...
  width: int
  height: int

  @property
  def decoder(self) -> str:
    """Who decodes it exactly as PIL's convert('RGB'): 'jpeg' or 'png' (TensorFlow) or 'pil'.

    TF matches PIL bit for bit on RGB/grayscale JPEGs (with the accurate IDCT) and on 8-bit
    PNGs of any mode; CMYK JPEGs, GIFs and BMPs (palette BMPs decode wrongly in TF) go to PIL.
    16-bit PNGs go to TF, which keeps the high byte where PIL saturates to white.
    """
    if self.format == "JPEG" and self.mode in ("RGB", "L"):
      return "jpeg"
    if self.format == "PNG":
      return "png"
    return "pil"


def check_image(path: str, max_pixels: int = DEFAULT_MAX_IMAGE_PIXELS,
                ) -> tuple[Optional[ImageInfo], Optional[str]]:
  """(info, None) when PIL can decode the whole file, else (None, reason).

  The size declared in the header is checked against `max_pixels` before anything is decoded,
  so a decompression bomb costs a header read, not its declared gigabytes.
  """
  if "\t" in path or "\n" in path:
    return None, "its name holds a tab or a line break (splits/*.txt holds one path per line)"
  try:
    size = os.path.getsize(path)  # follows symlinks: a loop or a dangling link fails here
  except OSError as e:
    return None, f"cannot read: {e.strerror or e}"
  if size == 0:
    return None, "empty file (0 bytes)"
  try:
    with Image.open(path) as im:  # reads the header only
      info = ImageInfo(im.format or "?", im.mode, im.width, im.height)
      if info.width * info.height > max_pixels:
        return None, (f"declares {info.width}x{info.height} pixels, over "
                      f"config.data.max_image_pixels={max_pixels} (not decoded)")
      if im.format == "JPEG":
        im.draft("RGB", (max(1, im.width // 8), max(1, im.height // 8)))  # 1/8 scale: fast,
      im.load()                                                            # still reads it all
    if info.width < 1 or info.height < 1:
      return None, f"image has no pixels ({info.width}x{info.height})"
    return info, None
  except Image.UnidentifiedImageError:
    return None, "not an image (PIL cannot identify the file)"
  except Image.DecompressionBombError as e:  # PIL's own check at open, above twice its limit
    return None, f"declares too many pixels, over config.data.max_image_pixels={max_pixels} ({e})"
  except (OSError, SyntaxError, ValueError, EOFError, MemoryError) as e:
    msg = str(e) or type(e).__name__
    return None, f"cannot decode: {msg}"


def scan_images(paths: Sequence[str], *, num_threads: Optional[int] = None,
                progress: Optional[bool] = None, desc: str = "checking images",
                max_pixels: int = DEFAULT_MAX_IMAGE_PIXELS,
                ) -> tuple[dict[str, ImageInfo], list[tuple[str, str]]]:
  """Check every file in a thread pool: ({path: info} of readable ones, [(path, reason)])."""
  paths = list(paths)
  if progress is None:
    progress = len(paths) >= 2000
  workers = num_threads or min(32, 2 * (os.cpu_count() or 1))
  infos, skipped = {}, []
  with concurrent.futures.ThreadPoolExecutor(workers) as pool:
    results = pool.map(lambda p: check_image(p, max_pixels), paths, chunksize=16)
    for p, (info, reason) in tqdm(zip(paths, results), total=len(paths), desc=desc,
                                  disable=not progress, unit="img"):
      if info is None:
        skipped.append((p, reason))
      else:
        infos[p] = info
  return infos, skipped


# ---------------------------------------------------------------------------------------------
# Seeded splits.

def seeded_rng(seed: int, *tags: int) -> np.random.Generator:
  """A NumPy generator that is a pure function of (seed, tags)."""
  return np.random.default_rng(np.random.SeedSequence([int(seed) % 2**32, *map(int, tags)]))


def stratified_choice(labels: np.ndarray, count: int, rng: np.random.Generator) -> np.ndarray:
  """Sorted indices of `count` examples drawn per class in proportion (largest remainder)."""
  labels = np.asarray(labels)
  if count <= 0:
    return np.zeros(0, np.int64)
  classes, sizes = np.unique(labels, return_counts=True)
  quota = sizes * (count / len(labels))
  take = np.floor(quota).astype(np.int64)
  extra = count - int(take.sum())
  take[np.argsort(-(quota - take), kind="stable")[:extra]] += 1
  chosen = [rng.permutation(np.flatnonzero(labels == c))[:k] for c, k in zip(classes, take)]
  return np.sort(np.concatenate(chosen))


def draw_splits(labels: np.ndarray, *, seed: int, holdout: int, val_fraction: float,
                has_validation: bool) -> dict[str, np.ndarray]:
  """Index arrays into the train source: 'holdout' first, then 'validation', rest 'train'.

  25,000 with holdout=1000, val_fraction=0.25 -> 1,000 / 6,000 / 18,000. Validation is only
  drawn when there is no validation source.
  """
  n = len(labels)
  idx = np.arange(n)
  out = {}
  if holdout:
    if holdout >= n:
      raise DataError(f"config.data.holdout={holdout} leaves nothing to train on: the training "
                      f"data has {n} readable images; lower it")
    pick = stratified_choice(labels, holdout, seeded_rng(seed, _HOLDOUT_TAG))
    out["holdout"] = pick
    idx = np.setdiff1d(idx, pick)
  if not has_validation and val_fraction > 0:
    k = int(np.floor(val_fraction * len(idx) + 0.5))
    if k >= len(idx):
      raise DataError(f"config.data.val_fraction={val_fraction} leaves nothing to train on "
                      f"({len(idx)} images); lower it")
    if k == 0:
      logging.warning("config.data.val_fraction=%s of %d images is 0 images: no validation",
                      val_fraction, len(idx))
    pick = idx[stratified_choice(labels[idx], k, seeded_rng(seed, _VALIDATION_TAG))]
    out["validation"] = pick
    idx = np.setdiff1d(idx, pick)
  out["train"] = idx
  return out


def epoch_order(seed: int, epoch: int, n: int) -> np.ndarray:
  """The training order of epoch `epoch`: a pure function of (seed, epoch)."""
  return seeded_rng(seed, EPOCH_TAG, epoch).permutation(n)


def batch_index_matrix(order: np.ndarray, global_batch: int, process_index: int = 0,
                       process_count: int = 1) -> np.ndarray:
  """[steps, global_batch // process_count] example indices of this process, -1 = padding.

  Global batch s is order[s*G:(s+1)*G] padded with -1; process p gets its contiguous slice
  [p*B, (p+1)*B) of every global batch, so N processes together see what one process sees.
  """
  if global_batch <= 0 or global_batch % process_count:
    raise DataError(f"batch size {global_batch} must be positive and divide by the "
                    f"process count {process_count}")
  n = len(order)
  steps = -(-n // global_batch)
  padded = np.full(steps * global_batch, -1, np.int64)
  padded[:n] = order
  b = global_batch // process_count
  return padded.reshape(steps, global_batch)[:, process_index * b:(process_index + 1) * b]


# ---------------------------------------------------------------------------------------------
# Split files in the workdir.

def _atomic_write(path: pathlib.Path, text: str):
  atomic.write_text(path, text)


def write_splits(workdir, splits: dict[str, tuple[list[str], np.ndarray]], meta: dict):
  """workdir/splits/<split>.txt (`path<TAB>label` lines), then splits/meta.json.

  meta.json is written last and lists the split files: it marks the set as complete, so
  another process never reads a half-written set.
  """
  d = pathlib.Path(workdir) / SPLITS_DIR
  for name, (paths, labels) in splits.items():
    _atomic_write(d / f"{name}.txt", "".join(f"{p}\t{int(l)}\n" for p, l in zip(paths, labels)))
  _atomic_write(d / "meta.json", json.dumps({**meta, "splits": list(splits)}, indent=2) + "\n")


def read_split_file(path) -> tuple[list[str], np.ndarray]:
  paths, labels = [], []
  with open(path) as f:
    for i, line in enumerate(f, 1):
      line = line.rstrip("\n")
      if not line:
        continue
      p, sep, l = line.rpartition("\t")
      if not sep or not l.lstrip("-").isdigit():
        raise DataError(f"{path}:{i}: expected `path<TAB>label`, got {line[:200]!r}; the file "
                        "is damaged: restore it or start a new workdir")
      paths.append(p)
      labels.append(int(l))
  return paths, np.asarray(labels, np.int32)


def read_splits(workdir) -> Optional[tuple[dict[str, tuple[list[str], np.ndarray]], dict]]:
  """The split files a previous run completed (meta.json and what it lists), else None."""
  d = pathlib.Path(workdir) / SPLITS_DIR
  if not (d / "meta.json").is_file():
    return None
  try:
    meta = json.loads((d / "meta.json").read_text())
  except json.JSONDecodeError as e:
    raise DataError(f"{d / 'meta.json'} is damaged ({e}): restore it or start a new "
                    "workdir") from e
  names = meta.get("splits") or [n for n in SPLIT_NAMES if (d / f"{n}.txt").is_file()]
  missing = [n for n in names if not (d / f"{n}.txt").is_file()]
  if missing:
    raise DataError(f"{d} lacks {', '.join(f'{n}.txt' for n in missing)} that its meta.json "
                    "lists: restore them, or start a new workdir")
  return {n: read_split_file(d / f"{n}.txt") for n in names}, meta


def assign_splits(sources: dict[str, tuple[list[str], np.ndarray]], class_names: list[str], *,
                  seed: int, holdout: int, val_fraction: float, source: str,
                  workdir=None, write: bool = True, root: Optional[str] = None,
                  ) -> tuple[dict[str, tuple[list[str], np.ndarray]], dict]:
  """Final splits from labelled sources ('train' [+ 'validation', 'test']).

  Reuses workdir/splits when present (checking they still match `sources`), else draws
  them (seeded) and writes them when `write`. Returns (splits, notes for the report).
  """
  meta = {"source": source, "root": root, "class_names": class_names, "seed": int(seed),
          "holdout": int(holdout), "val_fraction": float(val_fraction)}
  previous = read_splits(workdir) if workdir is not None else None
  if previous is not None:
    splits = _check_reused(previous, sources, meta, pathlib.Path(workdir) / SPLITS_DIR)
    used = {p for paths, _ in splits.values() for p in paths}
    unused = sum(p not in used for paths, _ in sources.values() for p in paths)
    if unused:
      logging.warning("%d readable images in %s are not in %s/%s (added after the splits "
                      "were made): not used", unused, source, workdir, SPLITS_DIR)
    return splits, {"splits_reused": True, "not_in_splits": unused}
  paths, labels = sources["train"]
  draws = draw_splits(labels, seed=seed, holdout=holdout, val_fraction=val_fraction,
                      has_validation="validation" in sources)
  splits = {k: ([paths[i] for i in v], labels[v]) for k, v in draws.items()}
  for k in ("validation", "test"):
    if k in sources:
      splits[k] = sources[k]
  if workdir is not None and write:
    write_splits(workdir, splits, meta)
  return splits, {"splits_reused": False, "not_in_splits": 0}


def _check_reused(previous, sources, meta, d: pathlib.Path):
  splits, old = previous
  for key in ("seed", "holdout", "val_fraction"):
    if key in old and old[key] != meta[key]:
      name = key if key == "seed" else f"data.{key}"
      raise DataError(f"config.{name}={meta[key]} but the splits in {d} were made with "
                      f"{old[key]}: use the same value to resume, or a new workdir")
  if "class_names" in old and old["class_names"] != meta["class_names"]:
    raise DataError(f"the classes in {meta['source']} are {meta['class_names']} but the "
                    f"splits in {d} were made for {old['class_names']}: point "
                    "--config.data.dir at the same data, or use a new workdir")
  available = {p: int(l) for paths, labels in sources.values() for p, l in zip(paths, labels)}
  old_root, new_root = old.get("root"), meta.get("root")
  out = {}
  for name, (paths, labels) in splits.items():
    if old_root and new_root and old_root != new_root:  # the data folder moved: follow it
      paths = [os.path.join(new_root, os.path.relpath(p, old_root))
               if p.startswith(old_root + os.sep) else p for p in paths]
    missing = [p for p, l in zip(paths, labels) if available.get(p) != int(l)]
    if missing:
      raise DataError(f"{len(missing)} of the {len(paths)} images listed in {d / name}.txt "
                      f"are missing, unreadable or relabelled in {meta['source']} (first: "
                      f"{missing[0]}): restore them, or start a new workdir (or delete {d} "
                      "to split again, which draws a new holdout)")
    out[name] = (paths, labels)
  return out


# ---------------------------------------------------------------------------------------------
# A whole data folder.

@dataclasses.dataclass
class FolderData:
  class_names: list[str]
  splits: dict[str, tuple[list[str], np.ndarray]]   # split -> (paths, int32 labels)
  infos: dict[str, ImageInfo]                       # readable files
  skipped: list[tuple[str, str]]                    # (path, reason), unreadable files
  report: dict


def _labelled(listing: FolderListing, infos, class_index):
  ok = [(f, c) for f, c in zip(listing.files, listing.classes) if f in infos]
  return [f for f, _ in ok], np.asarray([class_index[c] for _, c in ok], np.int32)


def _check_classes(listing: FolderListing, infos, split: str):
  readable = {}
  for f, c in zip(listing.files, listing.classes):
    readable[c] = readable.get(c, 0) + (f in infos)
  for c in listing.class_names:
    if not readable.get(c):
      where = (os.path.join(listing.path, c) if listing.layout == "classes"
               else os.path.join(listing.path, f"{c}*"))
      total = listing.classes.count(c)
      what = f"its {total} files are all unreadable" if total else "it holds no image files"
      raise DataError(f"class {c!r} of the {split} data has no readable image: {where} ("
                      f"{what}, see the log): add images, or remove the class folder")


def check_listings(listings: dict[str, FolderListing]) -> list[str]:
  """The checks a listing answers without opening an image (run before any work); returns the
  class names. Empty or unlabelled splits, a single class, and validation classes that differ
  from training's each raise a DataError naming the folder."""
  train = listings["train"]
  if train.layout in ("empty", "unlabelled"):
    what = ("no image files" if train.layout == "empty" else
            f"only unlabelled images such as {os.path.basename(train.ignored[0])}")
    raise DataError(f"{train.path} has {what}: {_LAYOUT_HELP}; point --config.data.dir there")
  for split, listing in listings.items():
    if listing.layout in ("empty", "unlabelled"):
      raise DataError(f"the {split} folder {listing.path} has no labelled images "
                      f"({listing.layout}): {_LAYOUT_HELP}")
  for split, listing in listings.items():
    empty = [c for c in listing.class_dirs if c not in listing.classes]
    if empty:
      raise DataError(f"class folder {os.path.join(listing.path, empty[0])} of the {split} data "
                      "holds no image files: add images, or remove the folder (an empty class "
                      "would still take an output of the model)")
  class_names = train.class_names
  if len(class_names) < 2:
    raise DataError(f"{train.path} has one class ({class_names}): a classifier needs at least "
                    f"two ({_LAYOUT_HELP})")
  for split, listing in listings.items():
    if split != "train" and listing.class_names != class_names:
      raise DataError(f"the {split} folder {listing.path} has classes {listing.class_names} "
                      f"but the training folder {train.path} has {class_names}: make the "
                      "class folders (or file name prefixes) match")
  return class_names


def prepare_folder(data_dir, workdir=None, *, seed: int = 0, holdout: int = 0,
                   val_fraction: float = 0.2, write: bool = True,
                   num_threads: Optional[int] = None,
                   max_pixels: int = DEFAULT_MAX_IMAGE_PIXELS,
                   listings: Optional[dict[str, FolderListing]] = None) -> FolderData:
  """List, check and split a data folder; write splits and report into `workdir` if given.
  `listings`: `find_split_folders(data_dir)` when the caller has it already."""
  data_dir = os.path.abspath(os.fspath(data_dir))
  listings = find_split_folders(data_dir) if listings is None else listings
  class_names = check_listings(listings)
  all_files = [f for l in listings.values() for f in l.files]
  infos, skipped = scan_images(all_files, num_threads=num_threads, max_pixels=max_pixels)
  for split, listing in listings.items():
    _check_classes(listing, infos, split)
  index = {c: i for i, c in enumerate(class_names)}
  sources = {s: _labelled(l, infos, index) for s, l in listings.items()}
  splits, notes = assign_splits(sources, class_names, seed=seed, holdout=holdout,
                                val_fraction=val_fraction, source=data_dir, workdir=workdir,
                                write=write, root=data_dir)
  ignored = [f for l in listings.values() for f in l.ignored]
  report = make_report(
      source=data_dir, class_names=class_names, splits=splits, skipped=skipped,
      folders={s: l.path for s, l in listings.items()},
      layouts={s: l.layout for s, l in listings.items()}, ignored=ignored,
      seed=seed, holdout=holdout, val_fraction=val_fraction, **notes)
  if workdir is not None and write:
    write_report(workdir, report)
  log_report(report)
  return FolderData(class_names, splits, infos, skipped, report)


# ---------------------------------------------------------------------------------------------
# Report.

def make_report(*, source: str, class_names: list[str], splits, skipped, ignored=(),
                **extra) -> dict:
  counts = {s: {c: int(np.sum(labels == i)) for i, c in enumerate(class_names)}
            for s, (_, labels) in splits.items()}
  return {
      "source": source,
      "class_names": list(class_names),
      "num_examples": {s: len(paths) for s, (paths, _) in splits.items()},
      "counts": counts,
      "num_skipped": len(skipped),
      "skipped": [{"path": p, "reason": r} for p, r in skipped],
      "num_ignored": len(ignored),
      "ignored_examples": list(ignored)[:20],
      **extra,
  }


def write_report(workdir, report: dict):
  _atomic_write(pathlib.Path(workdir) / REPORT_FILE, json.dumps(report, indent=2) + "\n")


def log_report(report: dict, max_lines: int = 10):
  logging.info("data %s: classes %s; examples %s%s", report["source"], report["class_names"],
               report["num_examples"], " (splits reused)" if report.get("splits_reused") else "")
  skipped = report["skipped"]
  if skipped:
    logging.warning("skipped %d unreadable files (all listed in %s):", len(skipped), REPORT_FILE)
    for s in skipped[:max_lines]:
      logging.warning("  %s: %s", s["path"], s["reason"])
    if len(skipped) > max_lines:
      logging.warning("  ... and %d more", len(skipped) - max_lines)
  if report.get("num_ignored"):
    logging.warning("ignored %d image files that carry no label (e.g. %s)",
                    report["num_ignored"], report["ignored_examples"][:3])

