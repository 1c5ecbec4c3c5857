"""Data stage: where examples come from and how they become batches.

``sources`` loads and labels the splits (embedded sample, local files, image folders, the Hub);
``text`` tokenizes and pads; ``images`` decodes, resizes/crops once and normalises per batch;
``inputs`` picks the modality's encoder and collator; ``sampling`` orders the batches.

May import: ``poolft.config``, ``poolft.errors`` (never models, training, recipes or the CLI).
"""
