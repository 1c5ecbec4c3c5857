"""Models stage: pooled Hugging Face classifiers and everything that loads or uses one.

``modeling`` defines ``PoolftConfig`` and the two Auto-registered model classes; ``backbones``
resolves a backbone and builds the model a run trains (poolft head or stock head);
``lora`` wraps it in peft's LoRA (optional ``peft`` extra), saves, reloads and merges the adapter;
``saved_models`` and ``prediction`` load a saved classifier and label inputs; ``model_card``
writes its README.

May import: ``poolft.data``, ``poolft.config``, ``poolft.errors``, ``poolft.pooling``.
"""
