"""Datasets and input pipelines.

- ``images``: image files: listing, checks (header, decompression bombs, truncation), decode, resize
- ``sources``: CIFAR-10 (mirror folder or keras.datasets) and class-per-subfolder folders; screening
- ``digests``: content hashes of files, remembered on disk (the data fingerprint)
- ``splits``: stratified, seeded subsets and train/val/test splits
- ``pipeline``: tf.data decode / resize / augment / batch (imports TensorFlow)
- ``preprocessing``: each architecture's input normalisation
- ``audit``: dataset health check (broken files, odd modes, duplicates)
- ``wikiart``: build an art-style folder from the public WikiArt dataset

Import the submodule you need; this package imports nothing heavy by itself.
"""
