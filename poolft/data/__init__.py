"""Data stage: where examples come from and how they become batches.

``sources`` loads and labels the splits (embedded sample, local files, image folders, the Hub);
``labels`` turns multi-label columns (lists of labels, or 0/1 columns) into multi-hot labels;
``text`` tokenizes and pads; ``images`` decodes, resizes/crops once and normalises per batch;
``inputs`` picks the modality's encoder and collator; ``sampling`` orders the batches.

May import: ``poolft.config``, ``poolft.errors`` (never models, training, recipes or the CLI).
"""
