r"""Throughput of a config on this machine: jit steps, backbone forward, input pipeline, and Keras.

  python -m rpsflax.benchmark --config=configs/rps.py                       # a table
  python -m rpsflax.benchmark --config=configs/rps.py --json                # one JSON object
  python -m rpsflax.benchmark --config=configs/rps.py --compare-keras \
      --data_dir=../shared/data/rps --batch_size=32 --steps=5 --repeats=5

Every figure is images/second, the median over round-robin timed runs, after compilation and
`--warmup` untimed calls. By default the rounds are set by a time budget (`--seconds`, 60: at
least 3 rounds, more while they fit), so a CPU run finishes in a few minutes and a GPU run takes
many short steps; `--repeats=N` fixes the count instead. Each round is logged as it ends. A timed
run repeats `--steps` calls (then block_until_ready) until it has lasted `--min_seconds`. The
figures are timed round-robin (run r of every figure, then run r+1), each run after one untimed
call (unless a call takes over 5 s), so that load drifting on a shared machine, or switching
between programs, hits every figure alike; ratios between figures are medians of per-round ratios.
Inputs are device-resident synthetic uint8 batches (values do not change the work), parameters are
random (`--weights` loads real ones; speed does not depend on them). Any recipe runs, the
BatchNorm backbones too (configs/rps_resnet50.py, configs/catsdogs_mobilenetv2.py): their random
BN statistics are the identity, and the forward runs BN in inference mode as their frozen step.

- train_images_per_sec: the full jit train step (on-device augmentation, preprocessing, forward,
  backward of the trainable part, optimizer update; frozen VGG16 + head for rps, the CNN for
  catsdogs, a frozen ResNet50 / MobileNetV2 + head for their recipes), state donated.
- eval_images_per_sec: the eval step. forward_images_per_sec: preprocessing + backbone alone.
- finetune_images_per_sec: the train step with everything trainable; the ratios
  frozen_step_over_forward and finetune_step_over_forward (time per image relative to the
  forward pass) show what freezing saves; *_flops_over_forward are the same ratios in FLOPs.
- FLOPs (forward_flops, train_step_flops, finetune_step_flops, per batch): counted from the
  model's conv and dense layers (flops.py: MACs x 2; a train step is the forward plus the
  trainable part's backward), the same on every backend. XLA's own counts are beside them
  (xla_*_flops): on GPUs they leave out the cuDNN convolutions. flops_source says which is which.
- augment_images_per_sec: the on-device augmentation alone. cached_head_images_per_sec: the head
  train step on cached features (rpsflax.features), and cached_features_speedup_estimate for the
  config's epochs and views.
- pipeline (needs TensorFlow and --data_dir): decode_images_per_sec (decode + resize once into
  the cache), cached_epoch_images_per_sec (an epoch of batches from the cache: what epochs 2..N
  cost), uncached_epoch_images_per_sec (decode every epoch); pipeline_images_per_sec is the one
  of the two that config.data.cache selects.
- --compare-keras (needs TensorFlow/Keras): the same model, batch, size and optimizer in Keras 3
  (frozen layers trainable=False, `train_on_batch` on the same arrays as tf tensors, after
  warm-up), run in a subprocess of this invocation (before JAX takes the accelerator) ->
  keras_train_images_per_sec, keras_forward_images_per_sec, train_speedup_vs_keras. Keras gets
  the already preprocessed batch and NO augmentation; our train step augments on device, so
  the speed-up is conservative.
- the bf16 row (--bf16_row; auto: on CPUs with AVX512-BF16, with --compare-keras, for a float32
  config): our train step in bfloat16 beside Keras' mixed_bfloat16 policy, in the same rounds ->
  train_bf16_images_per_sec, keras_bf16_train_images_per_sec, train_speedup_vs_keras_bf16.
- peak (peak.py): a large matrix product through JAX (n = 2048 on a CPU, 8192 on an
  accelerator) in the config's dtype and in float32, through NumPy's BLAS (CPU), and the CPU's
  ISA x clock x cores ceiling (not measured); peak_gflops_per_sec is the best measured one.
  forward_gflops_per_sec and train_step_gflops_per_sec (the FLOPs above x the rate),
  *_fraction_of_peak, and keras_forward/train_gflops_per_sec (the same FLOPs at Keras' rates).
- cpu: the host CPU's model, ISA (avx512_bf16, avx512, avx2, ...), vector flags, cores and clock;
  xla_cpu: the XLA:CPU flags chosen for that ISA (rpsflax/xla_cpu.py) and what they rest on.
- Keras on JAX (with --compare-keras): the same worker with KERAS_BACKEND=jax and XLA's default
  flags -> keras_jax_*_images_per_sec, train/eval_speedup_vs_keras_jax. eval_speedup_vs_keras*
  compare our eval step (backbone + head) with Keras' backbone predict_on_batch.
- --compare-flags: the JAX steps again in a subprocess with this project's XLA:CPU flags off
  (RPSFLAX_XLA_CPU_FLAGS=0) -> default_xla_flags, xla_flags_train_speedup.
- scaling (several devices): train images/s on 1, 2, 4, ..., N devices, `--batch_size` per device.

Figures that need TensorFlow are None when it is missing, with the reason under "skipped".

The modules, one job each:
  cli.py           flags (--compare-keras spelled either way), run, the table or JSON on stdout
  suite.py         `run`: every figure into one dict (FIGURES), derived ratios, what was skipped
  timing.py        the round-robin harness: timed runs, rounds within a budget, paired ratios
  inputs.py        the config measured, random or loaded parameters, synthetic batches
  jax_figures.py   the JAX steps (train/eval/forward/finetune/augment/cached head/bf16), scaling
  flops.py         FLOPs of the forward and the train step, counted from the model's layers
  peak.py          the machine's peak: large products (JAX, NumPy's BLAS), the CPU's ceiling
  pipeline.py      the tf.data input pipeline on a real folder
  keras_peer.py    a Keras worker process seen from here: its spec, one round per call
  keras_worker.py  the worker itself (`python -m rpsflax.benchmark.keras_worker SPEC`): no JAX
  table.py         the human-readable table
  environment.py   versions, and why TensorFlow is missing if it is
The Keras models themselves are rpsflax/keras_models.py (shared with the parity tests).
"""

import os

# Before anything can import TensorFlow (the pipeline, the Keras workers): quiet its C++ logs.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
