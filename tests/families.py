"""Tiny test doubles of every backbone family poolft supports, each with its own preprocessor.

A family's double is a tiny config (hidden 32, 2 layers, 4 heads) with seeded, perturbed weights,
saved with ``save_pretrained`` next to *that family's* tokenizer or image processor with the
settings its Hub checkpoints use: RoBERTa's byte-level BPE with ``<s> </s>`` and position ids
offset by the padding index, ALBERT/DeBERTa-v2/XLM-R SentencePiece models (trained here, offline,
with the ``sentencepiece`` package), DistilBERT without token types, DINOv2's and CLIP's
resize-the-shortest-edge-then-center-crop processors, DeiT's resize-256-crop-224 (scaled down),
SigLIP's tower without a class token. Bugs hide where every test uses one BERT tokenizer and one
ViT processor; these doubles are there so they cannot.

Use::

    from families import FAMILIES, build_family
    folder = build_family("roberta", tmp_root)  # tmp_root/roberta, built once, reused after
    AutoModel.from_pretrained(folder); AutoTokenizer.from_pretrained(folder)

``build_family`` writes into ``root/<name>`` and returns early when that folder is complete, so a
session-scoped root makes every family cost one build per test session (``tests/conftest.py``'s
``family_dir`` fixture does that).
"""

from __future__ import annotations

import io
import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402
from transformers import PretrainedConfig, PreTrainedModel  # noqa: E402
from transformers.models.auto.modeling_auto import (  # noqa: E402
    MODEL_FOR_IMAGE_CLASSIFICATION_MAPPING_NAMES,
    MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING_NAMES,
)

#: every double: hidden width, layers, heads, feed-forward width
HIDDEN, LAYERS, HEADS, INTERMEDIATE = 32, 2, 4, 64
#: image doubles: the side the model sees and the patch (a 4 x 4 grid)
IMAGE_SIZE, PATCH_SIZE = 32, 8
#: text doubles: positions (the trainer's default max_length is 128)
MAX_POSITIONS = 128
#: ImageNet "default" statistics (timm / DINOv2 / DeiT processors) and OpenAI CLIP's
IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]
CLIP_MEAN, CLIP_STD = [0.48145466, 0.4578275, 0.40821073], [0.26862954, 0.26130258, 0.27577711]

_WORDS = (  # noqa: SIM905 (a word list reads better as text)
    "the a an this that it is was were be not very so too and but or of on in to for with at by "
    "movie film story plot actor actors acting scene scenes music ending book cat cats dog mat sat "
    "good great fine nice fun love loved like liked best bad awful boring dull poor worst hate "
    "hated really quite just even more most than all"
).split()
#: text the subword models are trained on: every word of the test data, in sentences and alone
TRAINING_SENTENCES = (
    [" ".join(_WORDS[i : i + 7]) + (" !" if i % 2 else " .") for i in range(0, len(_WORDS), 3)]
    + _WORDS
    + [w.capitalize() for w in _WORDS]
    + [
        "0 1 2 3 4 5 6 7 8 9 , . ! ? ' -",
        " ".join("abcdefghijklmnopqrstuvwxyz"),
        " ".join("ABCDEFGHIJKLMNOPQRSTUVWXYZ"),
    ]
)


@dataclass(frozen=True)
class Family:
    """One backbone family: how to build its double, and what it is.

    Attributes:
        name: short id, also the folder name (``"xlm-roberta"``).
        title: how people write it (``"XLM-RoBERTa"``).
        modality: ``"text"`` or ``"image"``.
        model_class: the transformers encoder class the double is saved as.
        preprocessor_class: the tokenizer / image-processor class saved with it.
        settings: what is particular about it (special tokens, positions, resize and crop).
        build: writes the double into an empty folder.
        prefix_tokens: tokens before the patches (images: CLS, distillation, registers).
    """

    name: str
    title: str
    modality: str
    model_class: str
    preprocessor_class: str
    settings: str
    build: Callable[[Path], None]
    prefix_tokens: int = 0

    @property
    def model_type(self) -> str:
        """The transformers ``model_type`` of the double's config (``"xlm-roberta"``)."""
        return _CONFIG_TYPES[self.name].model_type

    @property
    def stock_classifier(self) -> str | None:
        """The transformers ``*For{Sequence,Image}Classification`` class for this config, if any."""
        mapping = (
            MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING_NAMES
            if self.modality == "text"
            else MODEL_FOR_IMAGE_CLASSIFICATION_MAPPING_NAMES
        )
        found = mapping.get(self.model_type)
        return found[0] if isinstance(found, (list, tuple)) else found


def perturb(model: PreTrainedModel, seed: int) -> PreTrainedModel:
    """Move every parameter off its init (seeded) so re-initialisation cannot go unnoticed."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(0.05 * torch.randn(parameter.shape, generator=generator))
    return model.eval()


def save_perturbed(model_class: type, config: PretrainedConfig, folder: Path, seed: int = 0, **kwargs) -> None:
    """Build ``model_class(config, **kwargs)`` from ``seed``, ``perturb`` it and ``save_pretrained`` it."""
    torch.manual_seed(seed)
    perturb(model_class(config, **kwargs), seed).save_pretrained(folder)


# ---------------------------------------------------------------- subword vocabularies


def wordpiece_vocab() -> list[str]:
    """BERT-style WordPiece vocabulary: specials ([PAD] = 0), words, suffixes, characters."""
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    characters = list("abcdefghijklmnopqrstuvwxyz0123456789.,!?'-")
    suffixes = ["##s", "##ed", "##ing", "##ly", "##er", "##est", "##y"]
    continuations = [f"##{c}" for c in characters if c.isalnum()]
    return list(dict.fromkeys(specials + _WORDS + suffixes + characters + continuations))


def sentencepiece_pieces(vocab_size: int = 160) -> list[tuple[str, float]]:
    """A unigram SentencePiece model trained here on ``TRAINING_SENTENCES``: ``(piece, score)``.

    Trained without control symbols (only ``<unk>`` at id 0, dropped here), so each family puts its
    own specials where its Hub vocabulary has them.
    """
    import sentencepiece as spm

    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(TRAINING_SENTENCES),
        model_writer=model,
        vocab_size=vocab_size,
        model_type="unigram",
        character_coverage=1.0,
        unk_id=0,
        bos_id=-1,
        eos_id=-1,
        pad_id=-1,
        hard_vocab_limit=False,
        minloglevel=2,
        num_threads=1,
        seed_sentencepiece_size=10000,
    )
    processor = spm.SentencePieceProcessor(model_proto=model.getvalue())
    return [(processor.id_to_piece(i), processor.get_score(i)) for i in range(1, processor.get_piece_size())]


def byte_level_bpe(special_tokens: list[str], vocab_size: int = 400) -> tuple[dict[str, int], list[str]]:
    """GPT-2-style byte-level BPE trained here: ``(vocab, merges)`` with ``special_tokens`` first."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=special_tokens,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(TRAINING_SENTENCES, trainer=trainer)
    state = json.loads(tokenizer.to_str())["model"]
    merges = [m if isinstance(m, str) else " ".join(m) for m in state["merges"]]
    return dict(state["vocab"]), merges


# ---------------------------------------------------------------- text families


def build_bert(folder: Path) -> None:
    from transformers import BertConfig, BertModel, BertTokenizer

    tokenizer = BertTokenizer(vocab=dict((t, i) for i, t in enumerate(wordpiece_vocab())), do_lower_case=True)
    config = BertConfig(
        vocab_size=len(tokenizer),
        hidden_size=HIDDEN,
        num_hidden_layers=LAYERS,
        num_attention_heads=HEADS,
        intermediate_size=INTERMEDIATE,
        max_position_embeddings=MAX_POSITIONS,
        pad_token_id=tokenizer.pad_token_id,
    )
    save_perturbed(BertModel, config, folder, add_pooling_layer=True)
    tokenizer.save_pretrained(folder)


def build_electra(folder: Path) -> None:
    from transformers import ElectraConfig, ElectraModel, ElectraTokenizer

    tokenizer = ElectraTokenizer(vocab=dict((t, i) for i, t in enumerate(wordpiece_vocab())), do_lower_case=True)
    config = ElectraConfig(
        vocab_size=len(tokenizer),
        embedding_size=16,  # ELECTRA projects smaller embeddings up to the hidden width
        hidden_size=HIDDEN,
        num_hidden_layers=LAYERS,
        num_attention_heads=HEADS,
        intermediate_size=INTERMEDIATE,
        max_position_embeddings=MAX_POSITIONS,
        pad_token_id=tokenizer.pad_token_id,
    )
    save_perturbed(ElectraModel, config, folder)
    tokenizer.save_pretrained(folder)


def build_distilbert(folder: Path) -> None:
    from transformers import DistilBertConfig, DistilBertModel, DistilBertTokenizer

    tokenizer = DistilBertTokenizer(vocab=dict((t, i) for i, t in enumerate(wordpiece_vocab())), do_lower_case=True)
    assert "token_type_ids" not in tokenizer.model_input_names  # DistilBERT has no segment embeddings
    config = DistilBertConfig(
        vocab_size=len(tokenizer),
        dim=HIDDEN,
        n_layers=LAYERS,
        n_heads=HEADS,
        hidden_dim=INTERMEDIATE,
        max_position_embeddings=MAX_POSITIONS,
        pad_token_id=tokenizer.pad_token_id,
    )
    save_perturbed(DistilBertModel, config, folder)
    tokenizer.save_pretrained(folder)


def build_roberta(folder: Path) -> None:
    from transformers import RobertaConfig, RobertaModel, RobertaTokenizer

    # roberta-base's order: <s>=0 <pad>=1 </s>=2 <unk>=3 ... <mask>
    vocab, merges = byte_level_bpe(["<s>", "<pad>", "</s>", "<unk>"])
    vocab["<mask>"] = len(vocab)
    tokenizer = RobertaTokenizer(vocab=vocab, merges=[tuple(m.split(" ")) for m in merges])
    config = RobertaConfig(
        vocab_size=len(tokenizer),
        hidden_size=HIDDEN,
        num_hidden_layers=LAYERS,
        num_attention_heads=HEADS,
        intermediate_size=INTERMEDIATE,
        # position ids start after the padding index (1), as in roberta-base's 514 positions
        max_position_embeddings=MAX_POSITIONS + 2,
        type_vocab_size=1,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    save_perturbed(RobertaModel, config, folder, add_pooling_layer=True)
    tokenizer.save_pretrained(folder)


def build_xlm_roberta(folder: Path) -> None:
    from transformers import XLMRobertaConfig, XLMRobertaModel, XLMRobertaTokenizer

    # fairseq's order in front of the SentencePiece pieces: <s>=0 <pad>=1 </s>=2 <unk>=3, <mask> last
    vocab = [("<s>", 0.0), ("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0)]
    vocab += sentencepiece_pieces() + [("<mask>", 0.0)]
    tokenizer = XLMRobertaTokenizer(vocab=vocab)
    config = XLMRobertaConfig(
        vocab_size=len(tokenizer),
        hidden_size=HIDDEN,
        num_hidden_layers=LAYERS,
        num_attention_heads=HEADS,
        intermediate_size=INTERMEDIATE,
        max_position_embeddings=MAX_POSITIONS + 2,
        type_vocab_size=1,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    save_perturbed(XLMRobertaModel, config, folder, add_pooling_layer=True)
    tokenizer.save_pretrained(folder)


def build_albert(folder: Path) -> None:
    from transformers import AlbertConfig, AlbertModel, AlbertTokenizer

    # albert-base-v2's spiece.model order: <pad>=0 <unk>=1 [CLS]=2 [SEP]=3 [MASK]=4
    vocab = [("<pad>", 0.0), ("<unk>", 0.0), ("[CLS]", 0.0), ("[SEP]", 0.0), ("[MASK]", 0.0)]
    tokenizer = AlbertTokenizer(vocab=vocab + sentencepiece_pieces(), do_lower_case=True)
    config = AlbertConfig(
        vocab_size=len(tokenizer),
        embedding_size=16,
        hidden_size=HIDDEN,
        num_hidden_layers=LAYERS,
        num_hidden_groups=1,  # ALBERT shares one layer's weights across all layers
        num_attention_heads=HEADS,
        intermediate_size=INTERMEDIATE,
        max_position_embeddings=MAX_POSITIONS,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.cls_token_id,
        eos_token_id=tokenizer.sep_token_id,
    )
    save_perturbed(AlbertModel, config, folder, add_pooling_layer=True)
    tokenizer.save_pretrained(folder)


def build_deberta_v2(folder: Path) -> None:
    from transformers import DebertaV2Config, DebertaV2Model, DebertaV2Tokenizer

    # deberta-v3's order: [PAD]=0 [CLS]=1 [SEP]=2 [UNK]=3 ... [MASK] last
    vocab = [("[PAD]", 0.0), ("[CLS]", 0.0), ("[SEP]", 0.0), ("[UNK]", 0.0)]
    tokenizer = DebertaV2Tokenizer(vocab=vocab + sentencepiece_pieces() + [("[MASK]", 0.0)], do_lower_case=False)
    config = DebertaV2Config(
        vocab_size=len(tokenizer),
        hidden_size=HIDDEN,
        num_hidden_layers=LAYERS,
        num_attention_heads=HEADS,
        intermediate_size=INTERMEDIATE,
        max_position_embeddings=MAX_POSITIONS,
        type_vocab_size=0,
        # deberta-v3: relative positions only (no absolute position embeddings)
        relative_attention=True,
        position_biased_input=False,
        pos_att_type=["p2c", "c2p"],
        position_buckets=32,
        max_relative_positions=-1,
        norm_rel_ebd="layer_norm",
        share_att_key=True,
        pad_token_id=tokenizer.pad_token_id,
    )
    save_perturbed(DebertaV2Model, config, folder)
    tokenizer.save_pretrained(folder)


def build_modernbert(folder: Path) -> None:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import ModernBertConfig, ModernBertModel, PreTrainedTokenizerFast

    # ModernBERT ships a fast byte-level BPE (OLMo's) with BERT's specials appended after the merges
    vocab, merges = byte_level_bpe(["<|endoftext|>"])
    for token in ("[UNK]", "[CLS]", "[SEP]", "[PAD]", "[MASK]"):
        vocab[token] = len(vocab)
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[tuple(m.split(" ")) for m in merges]))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    backend.post_processor = processors.TemplateProcessing(
        single="[CLS]:0 $A:0 [SEP]:0",
        pair="[CLS]:0 $A:0 [SEP]:0 $B:0 [SEP]:0",
        special_tokens=[("[CLS]", vocab["[CLS]"]), ("[SEP]", vocab["[SEP]"])],
    )
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        unk_token="[UNK]",
        cls_token="[CLS]",
        sep_token="[SEP]",
        pad_token="[PAD]",
        mask_token="[MASK]",
        model_input_names=["input_ids", "attention_mask"],
        clean_up_tokenization_spaces=True,
    )
    config = ModernBertConfig(
        vocab_size=len(vocab),
        hidden_size=HIDDEN,
        num_hidden_layers=LAYERS,
        num_attention_heads=HEADS,
        intermediate_size=INTERMEDIATE,
        max_position_embeddings=MAX_POSITIONS,
        local_attention=16,  # smaller than the test texts' batches, so local attention is exercised
        pad_token_id=vocab["[PAD]"],
        bos_token_id=vocab["[CLS]"],
        cls_token_id=vocab["[CLS]"],
        eos_token_id=vocab["[SEP]"],
        sep_token_id=vocab["[SEP]"],
        attn_implementation="sdpa",  # no flash-attention on CPU
    )
    save_perturbed(ModernBertModel, config, folder)
    tokenizer.save_pretrained(folder)


# ---------------------------------------------------------------- image families


def _vit_fields() -> dict:
    return dict(
        hidden_size=HIDDEN,
        num_hidden_layers=LAYERS,
        num_attention_heads=HEADS,
        intermediate_size=INTERMEDIATE,
        image_size=IMAGE_SIZE,
        patch_size=PATCH_SIZE,
        num_channels=3,
    )


def build_vit(folder: Path) -> None:
    from transformers import ViTConfig, ViTImageProcessorPil, ViTModel

    save_perturbed(ViTModel, ViTConfig(**_vit_fields()), folder, add_pooling_layer=True)
    # google/vit-base-patch16-224: plain resize to the square, mean/std 0.5
    ViTImageProcessorPil(
        size={"height": IMAGE_SIZE, "width": IMAGE_SIZE}, image_mean=[0.5] * 3, image_std=[0.5] * 3
    ).save_pretrained(folder)


def build_deit(folder: Path) -> None:
    from transformers import DeiTConfig, DeiTImageProcessorPil, DeiTModel

    save_perturbed(DeiTModel, DeiTConfig(**_vit_fields()), folder, add_pooling_layer=True)
    # facebook/deit-*-patch16-224: resize to 256 x 256, center-crop 224 (8:7), ImageNet statistics
    DeiTImageProcessorPil(
        size={"height": IMAGE_SIZE * 8 // 7, "width": IMAGE_SIZE * 8 // 7},
        crop_size={"height": IMAGE_SIZE, "width": IMAGE_SIZE},
        do_center_crop=True,
        image_mean=IMAGENET_DEFAULT_MEAN,
        image_std=IMAGENET_DEFAULT_STD,
    ).save_pretrained(folder)


def build_beit(folder: Path) -> None:
    from transformers import BeitConfig, BeitImageProcessorPil, BeitModel

    config = BeitConfig(
        **_vit_fields(),
        use_relative_position_bias=True,  # microsoft/beit-base-patch16-224: per-layer relative bias
        use_mean_pooling=True,
        layer_scale_init_value=0.1,
    )
    save_perturbed(BeitModel, config, folder, add_pooling_layer=True)
    BeitImageProcessorPil(
        size={"height": IMAGE_SIZE, "width": IMAGE_SIZE},
        do_center_crop=False,
        image_mean=[0.5] * 3,
        image_std=[0.5] * 3,
        do_reduce_labels=False,
    ).save_pretrained(folder)


def _dinov2_processor():
    from transformers import BitImageProcessorPil

    # facebook/dinov2-*: resize the shortest edge to 256, center-crop 224 (scaled: 40 -> 32)
    return BitImageProcessorPil(
        size={"shortest_edge": 40},
        crop_size={"height": IMAGE_SIZE, "width": IMAGE_SIZE},
        do_center_crop=True,
        image_mean=IMAGENET_DEFAULT_MEAN,
        image_std=IMAGENET_DEFAULT_STD,
    )


def build_dinov2(folder: Path) -> None:
    from transformers import Dinov2Config, Dinov2Model

    fields = {k: v for k, v in _vit_fields().items() if k != "intermediate_size"}
    save_perturbed(Dinov2Model, Dinov2Config(**fields, mlp_ratio=2, layerscale_value=0.5), folder)
    _dinov2_processor().save_pretrained(folder)


def build_dinov2_registers(folder: Path) -> None:
    from transformers import Dinov2WithRegistersConfig, Dinov2WithRegistersModel

    fields = {k: v for k, v in _vit_fields().items() if k != "intermediate_size"}
    config = Dinov2WithRegistersConfig(**fields, mlp_ratio=2, layerscale_value=0.5, num_register_tokens=4)
    save_perturbed(Dinov2WithRegistersModel, config, folder)
    _dinov2_processor().save_pretrained(folder)


def build_clip_vision(folder: Path) -> None:
    from transformers import CLIPImageProcessorPil, CLIPVisionConfig, CLIPVisionModel

    config = CLIPVisionConfig(**_vit_fields(), projection_dim=HIDDEN)
    save_perturbed(CLIPVisionModel, config, folder)
    # openai/clip-vit-*: resize the shortest edge to 224, center-crop 224, CLIP's statistics
    CLIPImageProcessorPil(
        size={"shortest_edge": IMAGE_SIZE},
        crop_size={"height": IMAGE_SIZE, "width": IMAGE_SIZE},
        do_center_crop=True,
        image_mean=CLIP_MEAN,
        image_std=CLIP_STD,
    ).save_pretrained(folder)


def build_siglip_vision(folder: Path) -> None:
    from transformers import SiglipImageProcessorPil, SiglipVisionConfig, SiglipVisionModel

    # google/siglip-*: no class token (the tower pools with its own attention head), plain resize
    config = SiglipVisionConfig(**_vit_fields(), vision_use_head=True)
    save_perturbed(SiglipVisionModel, config, folder)
    SiglipImageProcessorPil(
        size={"height": IMAGE_SIZE, "width": IMAGE_SIZE}, image_mean=[0.5] * 3, image_std=[0.5] * 3
    ).save_pretrained(folder)


# ---------------------------------------------------------------- the registry


def _config_types() -> dict[str, type]:
    from transformers import (
        AlbertConfig,
        BeitConfig,
        BertConfig,
        CLIPVisionConfig,
        DebertaV2Config,
        DeiTConfig,
        Dinov2Config,
        Dinov2WithRegistersConfig,
        DistilBertConfig,
        ElectraConfig,
        ModernBertConfig,
        RobertaConfig,
        SiglipVisionConfig,
        ViTConfig,
        XLMRobertaConfig,
    )

    return {
        "bert": BertConfig,
        "roberta": RobertaConfig,
        "distilbert": DistilBertConfig,
        "albert": AlbertConfig,
        "electra": ElectraConfig,
        "deberta-v2": DebertaV2Config,
        "xlm-roberta": XLMRobertaConfig,
        "modernbert": ModernBertConfig,
        "vit": ViTConfig,
        "deit": DeiTConfig,
        "beit": BeitConfig,
        "dinov2": Dinov2Config,
        "dinov2-registers": Dinov2WithRegistersConfig,
        "clip-vision": CLIPVisionConfig,
        "siglip-vision": SiglipVisionConfig,
    }


_CONFIG_TYPES = _config_types()

FAMILIES: dict[str, Family] = {
    family.name: family
    for family in [
        Family(
            "bert",
            "BERT",
            "text",
            "BertModel",
            "BertTokenizer",
            "WordPiece, `[CLS] … [SEP]`, token types",
            build_bert,
            prefix_tokens=0,
        ),
        Family(
            "roberta",
            "RoBERTa",
            "text",
            "RobertaModel",
            "RobertaTokenizer",
            "byte-level BPE, `<s> … </s>`, positions offset by the pad id",
            build_roberta,
            prefix_tokens=0,
        ),
        Family(
            "distilbert",
            "DistilBERT",
            "text",
            "DistilBertModel",
            "DistilBertTokenizer",
            "WordPiece, no token types",
            build_distilbert,
            prefix_tokens=0,
        ),
        Family(
            "albert",
            "ALBERT",
            "text",
            "AlbertModel",
            "AlbertTokenizer",
            "SentencePiece unigram, lower-cased, `[CLS] … [SEP]`",
            build_albert,
            prefix_tokens=0,
        ),
        Family(
            "electra",
            "ELECTRA",
            "text",
            "ElectraModel",
            "ElectraTokenizer",
            "WordPiece, embeddings narrower than the hidden width",
            build_electra,
            prefix_tokens=0,
        ),
        Family(
            "deberta-v2",
            "DeBERTa-v2",
            "text",
            "DebertaV2Model",
            "DebertaV2Tokenizer",
            "SentencePiece, relative positions only",
            build_deberta_v2,
            prefix_tokens=0,
        ),
        Family(
            "xlm-roberta",
            "XLM-RoBERTa",
            "text",
            "XLMRobertaModel",
            "XLMRobertaTokenizer",
            "SentencePiece, `<s> … </s>`, positions offset by the pad id",
            build_xlm_roberta,
            prefix_tokens=0,
        ),
        Family(
            "modernbert",
            "ModernBERT",
            "text",
            "ModernBertModel",
            "PreTrainedTokenizerFast",
            "byte-level BPE, rotary positions, local attention",
            build_modernbert,
            prefix_tokens=0,
        ),
        Family(
            "vit", "ViT", "image", "ViTModel", "ViTImageProcessor", "resize to the square", build_vit, prefix_tokens=1
        ),
        Family(
            "deit",
            "DeiT",
            "image",
            "DeiTModel",
            "DeiTImageProcessor",
            "resize 36, center-crop 32, as 256 → 224; CLS + distillation tokens",
            build_deit,
            prefix_tokens=2,
        ),
        Family(
            "beit",
            "BEiT",
            "image",
            "BeitModel",
            "BeitImageProcessor",
            "resize to the square, `crop_size` saved but off; relative position bias",
            build_beit,
            prefix_tokens=1,
        ),
        Family(
            "dinov2",
            "DINOv2",
            "image",
            "Dinov2Model",
            "BitImageProcessor",
            "shortest edge 40, center-crop 32, as 256 → 224",
            build_dinov2,
            prefix_tokens=1,
        ),
        Family(
            "dinov2-registers",
            "DINOv2 with registers",
            "image",
            "Dinov2WithRegistersModel",
            "BitImageProcessor",
            "shortest edge 40, center-crop 32; CLS + 4 registers",
            build_dinov2_registers,
            prefix_tokens=5,
        ),
        Family(
            "clip-vision",
            "CLIP vision tower",
            "image",
            "CLIPVisionModel",
            "CLIPImageProcessor",
            "shortest edge 32, center-crop 32, CLIP statistics",
            build_clip_vision,
            prefix_tokens=1,
        ),
        Family(
            "siglip-vision",
            "SigLIP vision tower",
            "image",
            "SiglipVisionModel",
            "SiglipImageProcessor",
            "resize to the square; no class token",
            build_siglip_vision,
            prefix_tokens=0,
        ),
    ]
}
TEXT_FAMILIES = [name for name, family in FAMILIES.items() if family.modality == "text"]
IMAGE_FAMILIES = [name for name, family in FAMILIES.items() if family.modality == "image"]

_DONE = ".family-complete"


def build_family(name: str, root: Path) -> Path:
    """``root/<name>`` holding family ``name``'s double and preprocessor (built once per folder)."""
    folder = Path(root) / name
    if (folder / _DONE).is_file():
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    FAMILIES[name].build(folder)
    (folder / _DONE).write_text(FAMILIES[name].title, encoding="utf-8")
    return folder
