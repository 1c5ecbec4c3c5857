"""Pooled classification models: any Hugging Face encoder -> pooling head -> dropout -> linear.

``PoolftConfig`` (model_type ``poolft``) stores the encoder's config, the head's name and options
and the label maps, so ``save_pretrained`` / ``from_pretrained`` and the Auto classes rebuild the
whole model with no custom code on the Hub side (``import poolft`` registers the classes).
"""

from __future__ import annotations

import inspect
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F
from transformers import (
    AutoConfig,
    AutoModel,
    AutoModelForImageClassification,
    AutoModelForSequenceClassification,
    PretrainedConfig,
    PreTrainedModel,
)
from transformers.configuration_utils import SubConfigSpec
from transformers.modeling_outputs import ImageClassifierOutput, SequenceClassifierOutput

from ..pooling import Pooler, build_pooler
from ..pooling.attention import AttentionPooler
from ..pooling.base import POOLERS
from ..pooling.reductions import GemPooler

LAYER_COMBINES = ("mean", "weighted")


class PoolftConfig(PretrainedConfig):
    """Config of a pooled classifier.

    Args:
        encoder_config: the backbone's config (a ``PretrainedConfig`` or its dict with
            ``model_type``).
        pooler: head name from ``available_poolers()``.
        pooler_options: the head's options; with ``pooler`` they rebuild it exactly.
        hidden_layers: which hidden layers to pool; ``[-1]`` (default) is the final output, other
            indices count the embedding output as 0 as in ``output_hidden_states``.
        layer_combine: how several layers are combined: ``"mean"`` or ``"weighted"`` (learned
            softmax weights).
        classifier_dropout: dropout between the pooled vector and the classifier.
    """

    model_type = "poolft"
    sub_configs_defaults = {"encoder_config": SubConfigSpec(config_class=AutoConfig, model_type="bert")}

    encoder_config: dict | PretrainedConfig | None = None
    pooler: str = "mean"
    pooler_options: dict | None = None
    hidden_layers: list[int] | None = None
    layer_combine: str = "mean"
    classifier_dropout: float = 0.1

    def __post_init__(self, **kwargs: Any) -> None:
        if self.pooler not in POOLERS:
            raise ValueError(f"unknown pooler {self.pooler!r}; choose one of: {', '.join(POOLERS)}")
        self.pooler_options = dict(self.pooler_options or {})
        self.hidden_layers = [int(i) for i in (self.hidden_layers or [-1])]
        if self.layer_combine not in LAYER_COMBINES:
            raise ValueError(f"layer_combine={self.layer_combine!r} is not one of {LAYER_COMBINES}")
        super().__post_init__(**kwargs)

    @property
    def hidden_size(self) -> int:
        """Width of the encoder's token states."""
        return self.encoder_config.hidden_size


def _pooling_layer_kwargs(config: PretrainedConfig) -> dict[str, Any]:
    """``add_pooling_layer=False`` for encoders that take it: poolft brings its own head."""
    model_class = AutoModel._model_mapping[type(config)]
    accepts = "add_pooling_layer" in inspect.signature(model_class.__init__).parameters
    return {"add_pooling_layer": False} if accepts else {}


def build_encoder(config: PretrainedConfig) -> PreTrainedModel:
    """A randomly initialised encoder (its own pooler left out) for ``config``."""
    return AutoModel.from_config(config, **_pooling_layer_kwargs(config))


def load_encoder(name_or_path: str, **load_kwargs: Any) -> tuple[PreTrainedModel, nn.Linear | None]:
    """Load a pretrained encoder; return it without its pooler, and that pooler's dense layer.

    ``load_kwargs`` go to ``AutoModel.from_pretrained`` (``revision``, ``trust_remote_code``, ...).
    """
    encoder, loading_info = AutoModel.from_pretrained(name_or_path, output_loading_info=True, **load_kwargs)
    own_pooler = getattr(encoder, "pooler", None)
    dense = getattr(own_pooler, "dense", None)
    if any(key.startswith("pooler.") for key in loading_info.get("missing_keys", ())):
        # the checkpoint has no pooler weights: the one the class built is random, not pretrained
        dense = None
    if own_pooler is not None and _pooling_layer_kwargs(encoder.config):
        encoder.pooler = None
    return encoder, dense if isinstance(dense, nn.Linear) else None


class LayerCombination(nn.Module):
    """Combine the selected hidden layers ``layers x (batch, tokens, hidden)`` into one."""

    def __init__(self, num_layers: int, combine: str) -> None:
        super().__init__()
        self.combine = combine
        self.logits = nn.Parameter(torch.zeros(num_layers)) if combine == "weighted" else None

    def forward(self, layers: list[torch.Tensor]) -> torch.Tensor:
        if len(layers) == 1:
            return layers[0]
        stacked = torch.stack(layers, dim=0)
        if self.logits is None:
            return stacked.mean(dim=0)
        weights = self.logits.softmax(dim=0).to(stacked.dtype)
        return torch.einsum("l,l...->...", weights, stacked)


class PoolftPreTrainedModel(PreTrainedModel):
    """Shared config class, weight init and encoder -> pooler -> classifier plumbing."""

    config_class = PoolftConfig
    base_model_prefix = "encoder"
    supports_gradient_checkpointing = True
    _supports_sdpa = True
    #: label smoothing of the training loss (``train.label_smoothing``); an attribute, not config: a saved
    #: model's outputs do not depend on it, so it is not saved and a loaded model computes the plain loss
    label_smoothing: float = 0.0

    def __init__(self, config: PoolftConfig, encoder: PreTrainedModel | None = None) -> None:
        super().__init__(config)
        self.encoder = encoder if encoder is not None else build_encoder(config.encoder_config)
        options = self._pooler_options(config)
        self.pooler: Pooler = build_pooler(config.pooler, config.hidden_size, **options)
        config.pooler_options = self.pooler.options
        self.layer_combination = LayerCombination(len(config.hidden_layers), config.layer_combine)
        self.dropout = nn.Dropout(config.classifier_dropout)
        self.classifier = nn.Linear(self.pooler.output_dim, config.num_labels)
        self.post_init()

    def _pooler_options(self, config: PoolftConfig) -> dict[str, Any]:
        return dict(config.pooler_options)

    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        std = getattr(self.config.encoder_config, "initializer_range", 0.02)
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, std=std)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, AttentionPooler):
            nn.init.normal_(module.query, std=module.hidden_size**-0.5)
        elif isinstance(module, GemPooler):
            module.p.fill_(module.initial_p)
        elif isinstance(module, LayerCombination) and module.logits is not None:
            nn.init.zeros_(module.logits)

    def selected_states(self, encoder_output: Any) -> torch.Tensor:
        """The configured hidden layer(s), combined: ``(batch, tokens, hidden)``."""
        if self.config.hidden_layers == [-1]:
            return encoder_output.last_hidden_state
        states = list(encoder_output.hidden_states)
        # the final entry is taken after any final norm, like last_hidden_state
        states[-1] = encoder_output.last_hidden_state
        return self.layer_combination([states[i] for i in self.config.hidden_layers])

    def wants_all_layers(self) -> bool:
        return self.config.hidden_layers != [-1]

    def classify(
        self,
        states: torch.Tensor,
        attention_mask: torch.Tensor | None,
        labels: torch.Tensor | None,
        *,
        num_prefix_tokens: int = 0,
        grid_size: tuple[int, int] | None = None,
    ) -> tuple[torch.Tensor | None, torch.Tensor]:
        """Pool ``states`` ``(batch, tokens, hidden)`` and classify: ``(loss, logits (batch, labels))``."""
        pooled = self.pooler(states, attention_mask, num_prefix_tokens=num_prefix_tokens, grid_size=grid_size)
        logits = self.classifier(self.dropout(pooled))
        return classification_loss(self.config, logits, labels, label_smoothing=self.label_smoothing), logits

    @classmethod
    def from_backbone(
        cls,
        name_or_path: str,
        pooler: str = "mean",
        num_labels: int | None = None,
        pooler_options: dict[str, Any] | None = None,
        *,
        id2label: dict[int, str] | None = None,
        hidden_layers: list[int] | None = None,
        layer_combine: str = "mean",
        classifier_dropout: float = 0.1,
        problem_type: str | None = None,
        **load_kwargs: Any,
    ) -> PoolftPreTrainedModel:
        """A pooled classifier on the pretrained encoder ``name_or_path`` (Hub id or folder).

        The encoder keeps its pretrained weights; with ``pooler="cls"`` and
        ``pooler_options={"dense": True}`` the dense layer starts from the encoder's own pooler.
        ``problem_type`` is transformers' (``"multi_label_classification"``: sigmoid outputs, BCE loss;
        None: set from the first labels seen). ``load_kwargs`` go to ``AutoModel.from_pretrained``.
        """
        if id2label is None:
            id2label = {i: f"LABEL_{i}" for i in range(num_labels if num_labels is not None else 2)}
        elif num_labels is not None and num_labels != len(id2label):
            raise ValueError(f"num_labels={num_labels} but id2label has {len(id2label)} labels; pass one of them")
        encoder, encoder_dense = load_encoder(name_or_path, **load_kwargs)
        config = PoolftConfig(
            encoder_config=encoder.config,
            pooler=pooler,
            pooler_options=pooler_options,
            hidden_layers=hidden_layers,
            layer_combine=layer_combine,
            classifier_dropout=classifier_dropout,
            problem_type=problem_type,
            id2label=dict(id2label),
            label2id={label: i for i, label in id2label.items()},
            # keep the attention kernel the encoder was loaded with (the config would reset it)
            attn_implementation=encoder.config._attn_implementation,
        )
        model = cls(config, encoder=encoder)
        model.init_new_weights()
        head_dense = getattr(model.pooler, "dense", None)
        if (
            isinstance(head_dense, nn.Linear)
            and encoder_dense is not None
            and encoder_dense.weight.shape == head_dense.weight.shape
        ):
            with torch.no_grad():
                head_dense.weight.copy_(encoder_dense.weight)
                head_dense.bias.copy_(encoder_dense.bias)
        return model

    @classmethod
    def from_pretrained(cls, *args: Any, **kwargs: Any) -> Any:
        """``PreTrainedModel.from_pretrained``, then the head's frozen parameters are frozen again.

        Loading swaps every parameter for a new ``nn.Parameter`` that requires grad, which would make
        e.g. ``gem`` with ``learn_p=False`` learn ``p`` (and report ``learn_p=True``) after a reload.
        """
        loaded = super().from_pretrained(*args, **kwargs)
        model = loaded[0] if isinstance(loaded, tuple) else loaded  # output_loading_info=True
        model.restore_head_requires_grad()
        return loaded

    def restore_head_requires_grad(self) -> None:
        """Give the head's parameters the ``requires_grad`` its config builds them with."""
        with torch.device("meta"):
            reference = build_pooler(self.config.pooler, self.config.hidden_size, **self.config.pooler_options)
        for name, parameter in self.pooler.named_parameters():
            parameter.requires_grad_(reference.get_parameter(name).requires_grad)

    def init_new_weights(self) -> None:
        """Initialise the head and classifier (the encoder keeps its weights)."""
        for module in (self.pooler, self.layer_combination, self.classifier):
            module.apply(self._init_weights)


def classification_loss(
    config: PretrainedConfig, logits: torch.Tensor, labels: torch.Tensor | None, *, label_smoothing: float = 0.0
) -> torch.Tensor | None:
    """The loss ``transformers`` uses for its ``*ForSequenceClassification`` models, chosen by ``config.problem_type``.

    ``logits`` ``(batch, labels)``; ``labels`` ids ``(batch,)`` or multi-hot ``(batch, labels)``. With
    ``label_smoothing`` e, cross-entropy smooths as ``F.cross_entropy(label_smoothing=e)`` and BCE targets
    become ``y (1 - e) + e / 2`` (each label's two-class cross-entropy, smoothed alike).
    """
    if labels is None:
        return None
    labels = labels.to(logits.device)
    if config.problem_type is None:
        if config.num_labels == 1:
            config.problem_type = "regression"
        elif labels.dtype in (torch.long, torch.int):
            config.problem_type = "single_label_classification"
        else:
            config.problem_type = "multi_label_classification"
    if config.problem_type == "regression":
        return F.mse_loss(logits.squeeze(-1).float(), labels.squeeze(-1).float())
    if config.problem_type == "single_label_classification":
        return F.cross_entropy(
            logits.float().view(-1, config.num_labels), labels.view(-1), label_smoothing=label_smoothing
        )
    return F.binary_cross_entropy_with_logits(logits.float(), smoothed_targets(labels, label_smoothing))


def smoothed_targets(labels: torch.Tensor, label_smoothing: float) -> torch.Tensor:
    """Multi-hot ``labels`` ``(batch, labels)`` as float BCE targets ``y (1 - e) + e / 2`` (unchanged for e = 0)."""
    targets = labels.float()
    return targets * (1 - label_smoothing) + label_smoothing / 2 if label_smoothing else targets


def per_example_loss(logits: torch.Tensor, labels: torch.Tensor, *, label_smoothing: float = 0.0) -> torch.Tensor:
    """The classification loss of each row, ``(batch,)``: its mean is ``classification_loss``.

    Multi-hot float ``labels`` ``(batch, labels)`` give BCE-with-logits averaged over the labels,
    int ids ``(batch,)`` cross-entropy (both with ``label_smoothing`` as in ``classification_loss``).
    """
    logits = logits.float()
    if labels.is_floating_point() and labels.dim() == logits.dim():
        targets = smoothed_targets(labels.to(logits.device), label_smoothing)
        return F.binary_cross_entropy_with_logits(logits, targets, reduction="none").mean(dim=-1)
    return F.cross_entropy(
        logits.view(-1, logits.shape[-1]), labels.view(-1), reduction="none", label_smoothing=label_smoothing
    )


def right_padding_order(attention_mask: torch.Tensor | None) -> torch.Tensor | None:
    """Per row, the column order that puts the real tokens first (in order) and the padding after.

    ``attention_mask`` ``(batch, tokens)`` -> indices ``(batch, tokens)``, or None when every row
    already has its real tokens first (right padding, no padding, or no 2-D mask). Inside
    ``torch.compile`` (``train.compile``) the order is always returned: checking the padding would
    split the graph, and the stable sort of right padding is the identity, so the result is the same.
    """
    if attention_mask is None or attention_mask.dim() != 2 or attention_mask.size(1) < 2:
        return None
    padding = (attention_mask == 0).to(torch.int8)
    if torch.compiler.is_compiling() or not bool((padding[:, 1:] >= padding[:, :-1]).all()):
        return torch.sort(padding, dim=1, stable=True).indices
    return None


def gather_tokens(values: torch.Tensor, order: torch.Tensor) -> torch.Tensor:
    """``values`` ``(batch | 1, tokens, ...)`` with row i's tokens in the order ``order[i]`` (``(batch, tokens)``)."""
    values = values.expand(order.size(0), *values.shape[1:])
    index = order.view(*order.shape, *([1] * (values.dim() - 2))).expand(*order.shape, *values.shape[2:])
    return values.gather(1, index)


class PoolftForSequenceClassification(PoolftPreTrainedModel):
    """Text encoder (BERT family) -> pooler -> dropout -> linear classifier.

    A left- (or otherwise) padded batch is moved to right padding before the encoder, every
    per-token input with it, so each text's logits are those it has alone: encoders count
    absolute positions (BERT), padding-offset positions (RoBERTa, XLM-R) and rotary positions
    (ModernBERT) from the first column, and a text's real tokens then start there whatever it is
    batched with. Returned ``hidden_states`` are put back in the caller's layout.
    """

    main_input_name = "input_ids"

    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        **kwargs: Any,
    ) -> SequenceClassifierOutput:
        """Classify a batch of texts padded on either side.

        Args: ``input_ids`` / ``attention_mask`` / ``token_type_ids`` / ``position_ids``
        ``(batch, tokens)``, or ``inputs_embeds`` ``(batch, tokens, hidden)``; ``labels`` ``(batch,)``
        (multi-label: multi-hot floats ``(batch, labels)``).
        Returns logits ``(batch, labels)`` and, when asked, ``hidden_states`` ``layers x (batch,
        tokens, hidden)`` in the columns of the inputs.
        """
        inputs = {
            "input_ids": input_ids,
            "attention_mask": attention_mask,
            "token_type_ids": token_type_ids,
            "position_ids": position_ids,
            "inputs_embeds": inputs_embeds,
        }
        inputs = {key: value for key, value in inputs.items() if value is not None}
        order = right_padding_order(attention_mask)
        if order is not None:
            inputs = {key: gather_tokens(value, order) for key, value in inputs.items()}
        requested = bool(kwargs.pop("output_hidden_states", False))  # popped even when all layers are needed
        output_hidden_states = self.wants_all_layers() or requested
        encoded = self.encoder(**inputs, output_hidden_states=output_hidden_states, **kwargs)
        loss, logits = self.classify(self.selected_states(encoded), inputs.get("attention_mask"), labels)
        hidden_states = encoded.hidden_states
        if order is not None and hidden_states is not None:
            back = order.argsort(dim=1)
            hidden_states = tuple(gather_tokens(states, back) for states in hidden_states)
        return SequenceClassifierOutput(loss=loss, logits=logits, hidden_states=hidden_states)


def patch_grid(pixel_values: torch.Tensor, patch_size: int | tuple[int, int]) -> tuple[int, int]:
    """Patch grid ``(h, w)`` a ViT makes from ``pixel_values`` ``(batch, channels, height, width)``."""
    patch_h, patch_w = (patch_size, patch_size) if isinstance(patch_size, int) else tuple(patch_size)
    return pixel_values.shape[-2] // patch_h, pixel_values.shape[-1] // patch_w


#: heads that read the class token of an image encoder
CLASS_TOKEN_POOLERS = ("cls", "clsmean")
#: parameter names of a learned class token: ViT, DeiT, BEiT, DINOv2 (``cls_token``), CLIP (``class_embedding``)
CLASS_TOKEN_PARAMETERS = ("cls_token", "class_embedding")


def has_class_token(encoder: nn.Module | PretrainedConfig) -> bool:
    """Whether an image encoder (or the one its config builds) puts a learned class token first.

    True for ViT, DeiT, BEiT, DINOv2 and CLIP's vision tower; False for SigLIP's, which has only
    patch tokens. A config is built on the meta device (no memory, no weights) to look.
    """
    if isinstance(encoder, PretrainedConfig):
        with torch.device("meta"):
            encoder = build_encoder(encoder)
    return any(name.rsplit(".", 1)[-1] in CLASS_TOKEN_PARAMETERS for name, _ in encoder.named_parameters())


class PoolftForImageClassification(PoolftPreTrainedModel):
    """Image encoder (ViT family) -> pooler -> dropout -> linear classifier.

    The patch grid comes from the actual ``pixel_values`` shape and the prefix-token count (CLS,
    registers, distillation; none for SigLIP) from the encoder's output length, so other image
    sizes and ViT variants work unchanged; position embeddings are interpolated when the size
    differs. The pooled states are the encoder's ``last_hidden_state``: after the final layernorm
    for ViT, DeiT, BEiT, DINOv2 and SigLIP; for CLIP's vision tower before ``post_layernorm`` (which
    CLIP applies to its pooled CLS only), as ``CLIPForImageClassification`` pools them.
    """

    main_input_name = "pixel_values"

    def __init__(self, config: PoolftConfig, encoder: PreTrainedModel | None = None) -> None:
        super().__init__(config, encoder)
        if config.pooler in CLASS_TOKEN_POOLERS and not has_class_token(self.encoder):
            raise ValueError(
                f"a {config.encoder_config.model_type} encoder has no class token, so the {config.pooler} pooler "
                "has no class token to take; use pooler='mean' or 'attention'"
            )

    def _pooler_options(self, config: PoolftConfig) -> dict[str, Any]:
        options = dict(config.pooler_options)
        if POOLERS[config.pooler].supports_grid and options.get("mode", "adaptive") == "adaptive":
            options.setdefault("grid", True)
        return options

    def encoder_kwargs(self, pixel_values: torch.Tensor) -> dict[str, Any]:
        parameters = inspect.signature(self.encoder.forward).parameters
        if "interpolate_pos_encoding" not in parameters:
            return {}
        size = self.config.encoder_config.image_size
        size = (size, size) if isinstance(size, int) else tuple(size)
        return {"interpolate_pos_encoding": tuple(pixel_values.shape[-2:]) != size}

    def forward(
        self,
        pixel_values: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        **kwargs: Any,
    ) -> ImageClassifierOutput:
        """Args: ``pixel_values`` ``(batch, channels, height, width)``; ``labels`` ``(batch,)`` (or multi-hot)."""
        if pixel_values is None:
            raise ValueError("pixel_values is required; run the images through the model's image processor")
        output_hidden_states = self.wants_all_layers() or bool(kwargs.pop("output_hidden_states", False))
        encoded = self.encoder(
            pixel_values, output_hidden_states=output_hidden_states, **self.encoder_kwargs(pixel_values), **kwargs
        )
        states = self.selected_states(encoded)
        grid = patch_grid(pixel_values, self.config.encoder_config.patch_size)
        num_prefix_tokens = states.size(1) - grid[0] * grid[1]
        grid_size = grid if self.pooler.uses_grid else None  # other heads ignore or refuse a grid
        loss, logits = self.classify(states, None, labels, num_prefix_tokens=num_prefix_tokens, grid_size=grid_size)
        return ImageClassifierOutput(loss=loss, logits=logits, hidden_states=encoded.hidden_states)


AutoConfig.register("poolft", PoolftConfig, exist_ok=True)
AutoModelForSequenceClassification.register(PoolftConfig, PoolftForSequenceClassification, exist_ok=True)
AutoModelForImageClassification.register(PoolftConfig, PoolftForImageClassification, exist_ok=True)
