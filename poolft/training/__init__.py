"""Training stage: the Accelerate loop and what it needs.

``loop`` is the training loop; ``optim`` the optimiser and schedule; ``clipping`` and
``cpu_dropout`` poolft's faster CPU step; ``checkpoints``, ``run_folder`` and ``fault_injection``
make runs resumable and testable under failure; ``run_info`` records hardware and versions;
``evaluation`` scores a saved model; ``feature_cache`` caches frozen-backbone states (probe track);
``averaging`` keeps a moving average of the weights (``train.ema_decay``); ``compilation`` runs the
training step through ``torch.compile`` (``train.compile``).

May import: ``poolft.models``, ``poolft.data``, ``poolft.metrics``, ``poolft.config``,
``poolft.errors``, ``poolft.pooling``.
"""
