"""Models stage: pooled Hugging Face classifiers and everything that loads or uses one.

``modeling`` defines ``PoolftConfig`` and the two Auto-registered model classes; ``backbones``
resolves a backbone and builds the model a run trains (poolft head or stock head);
``lora`` wraps it in peft's LoRA (optional ``peft`` extra), saves, reloads and merges the adapter;
``saved_models`` and ``prediction`` load a saved classifier and label inputs; ``explain`` says
how much its head reads of each token or patch (``explain_plot`` draws it); ``model_card``
writes its README; ``onnx_export`` writes a classifier, head included, as one ONNX graph
(optional ``onnx`` extra) and ``onnx_model`` runs such an export on ONNX Runtime for ``prediction``.

May import: ``poolft.data``, ``poolft.config``, ``poolft.errors``, ``poolft.pooling``.
"""
