"""Shared fixtures: tiny, offline backbones saved in Hugging Face format.

Each fixture builds its backbone once per test session from a config (random weights, fixed
seed), saves it with ``save_pretrained`` into a temporary folder together with its preprocessor,
and returns that folder. Load them as you would a Hub checkpoint::

    AutoModel.from_pretrained(tiny_bert_dir)
    AutoTokenizer.from_pretrained(tiny_bert_dir)
    PoolftForSequenceClassification.from_backbone(tiny_bert_dir, pooler="mean", num_labels=3)

Nothing is downloaded: ``HF_HUB_OFFLINE`` is set before ``transformers`` is imported.

The saved weights are the framework's random init plus a seeded perturbation, so LayerNorm
weights are not 1, biases are not 0 and the backbone's own pooler is not at its init: a test can
tell "kept the pretrained weights" from "re-initialised them".
"""

from __future__ import annotations

import os
import socket

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402
from families import save_perturbed  # noqa: E402
from transformers import (  # noqa: E402
    BertConfig,
    BertModel,
    BertTokenizer,
    ViTConfig,
    ViTImageProcessor,
    ViTModel,
)


class NetworkBlockedError(RuntimeError):
    """A test tried to open a connection beyond this machine (tests must run offline)."""


class NetworkGuard:
    """Patches ``socket`` so outbound connections raise; loopback and AF_UNIX stay allowed.

    Every refused attempt is also recorded in ``blocked``, so a test that swallows the error (a
    library falling back to its cache) still fails, in the teardown of ``_fail_tests_that_reach_out``.
    """

    error = NetworkBlockedError

    def __init__(self) -> None:
        self.blocked: list[str] = []
        self.originals: tuple | None = None

    @staticmethod
    def is_local(host: object) -> bool:
        if not isinstance(host, str) or host in ("", "localhost"):
            return True
        import ipaddress

        try:
            ip = ipaddress.ip_address(host.split("%", 1)[0])
        except ValueError:
            return False  # a host name other than localhost: refused before any DNS lookup
        mapped = getattr(ip, "ipv4_mapped", None) or ip
        return mapped.is_loopback or mapped.is_unspecified

    def check(self, family: int, address: object) -> None:
        if family not in (socket.AF_INET, socket.AF_INET6) or not isinstance(address, tuple) or not address:
            return
        if not self.is_local(address[0]):
            self.blocked.append(f"{address[0]}:{address[1] if len(address) > 1 else ''}")
            raise NetworkBlockedError(f"network access is blocked in tests (connection to {self.blocked[-1]})")

    def install(self) -> None:
        if self.originals is not None:
            return
        connect, connect_ex, create_connection = (
            socket.socket.connect,
            socket.socket.connect_ex,
            socket.create_connection,
        )
        guard = self
        self.originals = (connect, connect_ex, create_connection)

        def guarded_connect(sock, address):
            guard.check(sock.family, address)
            return connect(sock, address)

        def guarded_connect_ex(sock, address):
            guard.check(sock.family, address)
            return connect_ex(sock, address)

        def guarded_create_connection(address, *args, **kwargs):
            guard.check(socket.AF_INET, address)
            return create_connection(address, *args, **kwargs)

        socket.socket.connect, socket.socket.connect_ex = guarded_connect, guarded_connect_ex
        socket.create_connection = guarded_create_connection

    def uninstall(self) -> None:
        if self.originals is not None:
            socket.socket.connect, socket.socket.connect_ex, socket.create_connection = self.originals
            self.originals = None


NETWORK_GUARD = NetworkGuard()


def pytest_configure(config: pytest.Config) -> None:
    NETWORK_GUARD.install()


def pytest_unconfigure(config: pytest.Config) -> None:
    NETWORK_GUARD.uninstall()


@pytest.fixture(autouse=True)
def _fail_tests_that_reach_out():
    """Fail a test that tried to connect out, even if the code under test caught the error."""
    already = len(NETWORK_GUARD.blocked)
    yield
    attempts = NETWORK_GUARD.blocked[already:]
    if attempts:
        pytest.fail(f"the test tried to reach the network: {', '.join(attempts)}", pytrace=False)


@pytest.fixture
def network_guard() -> NetworkGuard:
    """The installed guard (``blocked``: refused attempts; ``error``: the exception it raises)."""
    return NETWORK_GUARD


#: hidden width of both tiny backbones
TINY_HIDDEN = 32
#: ViT input side and patch: a 4 x 4 patch grid plus the CLS token
TINY_IMAGE_SIZE = 28
TINY_PATCH_SIZE = 7

SPECIAL_TOKENS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
WORDS = (  # noqa: SIM905 (a word list reads better as text)
    "the a an this that it is was were be not very so too and but or of on in to for with at by "
    "movie film story plot actor actors acting scene scenes music ending book cat dog mat sat "
    "good great fine nice fun love loved like liked best bad awful boring dull poor worst hate "
    "hated really quite just even more most than all"
).split()
SUBWORDS = ["##s", "##ed", "##ing", "##ly", "##er", "##est", "##y"]
CHARACTERS = list("abcdefghijklmnopqrstuvwxyz0123456789.,!?'-")

#: the tiny WordPiece vocabulary: specials first ([PAD] = 0), whole words, suffixes, characters
TINY_VOCAB = list(
    dict.fromkeys(SPECIAL_TOKENS + WORDS + SUBWORDS + CHARACTERS + [f"##{c}" for c in CHARACTERS if c.isalnum()])
)

#: sentences of different lengths that tokenize into real (known) word pieces
TINY_TEXTS = [
    "the movie was great",
    "a boring film with awful acting and a dull plot",
    "loved it",
    "the actors were not bad but the ending was really the worst",
    "cats sat on the mat",
]


def build_tiny_bert(folder: Path, *, num_hidden_layers: int = 2, seed: int = 0) -> Path:
    """Save a tiny BERT (with its pooler) and a real WordPiece tokenizer into ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    vocab_file = folder / "vocab.txt"
    vocab_file.write_text("\n".join(TINY_VOCAB) + "\n", encoding="utf-8")
    tokenizer = BertTokenizer(vocab=str(vocab_file), do_lower_case=True)
    config = BertConfig(
        vocab_size=len(TINY_VOCAB),
        hidden_size=TINY_HIDDEN,
        num_hidden_layers=num_hidden_layers,
        num_attention_heads=4,
        intermediate_size=64,
        max_position_embeddings=128,
        type_vocab_size=2,
        pad_token_id=tokenizer.pad_token_id,
    )
    save_perturbed(BertModel, config, folder, seed, add_pooling_layer=True)
    tokenizer.save_pretrained(folder)
    return folder


def build_tiny_vit(folder: Path, *, num_hidden_layers: int = 2, seed: int = 0) -> Path:
    """Save a tiny ViT (28 px, patch 7, with its pooler) and a ``ViTImageProcessor`` into ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    config = ViTConfig(
        hidden_size=TINY_HIDDEN,
        num_hidden_layers=num_hidden_layers,
        num_attention_heads=4,
        intermediate_size=64,
        image_size=TINY_IMAGE_SIZE,
        patch_size=TINY_PATCH_SIZE,
        num_channels=3,
    )
    save_perturbed(ViTModel, config, folder, seed, add_pooling_layer=True)
    processor = ViTImageProcessor(
        size={"height": TINY_IMAGE_SIZE, "width": TINY_IMAGE_SIZE},
        image_mean=[0.5, 0.5, 0.5],
        image_std=[0.5, 0.5, 0.5],
    )
    processor.save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def tiny_bert_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Folder with a tiny BERT (2 layers, hidden 32, with pooler) and its WordPiece tokenizer."""
    return build_tiny_bert(tmp_path_factory.mktemp("tiny-bert"))


@pytest.fixture(scope="session")
def tiny_vit_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Folder with a tiny ViT (2 layers, hidden 32, 28 px, patch 7, with pooler) and its image processor."""
    return build_tiny_vit(tmp_path_factory.mktemp("tiny-vit"))


@pytest.fixture(scope="session")
def tiny_texts() -> list[str]:
    """A few sentences of different lengths covered by the tiny vocabulary."""
    return list(TINY_TEXTS)


@pytest.fixture(scope="session")
def family_dir(tmp_path_factory: pytest.TempPathFactory):
    """``family_dir("roberta")``: the folder of a family's tiny double (``tests/families.py``), built once."""
    from families import build_family

    root = tmp_path_factory.mktemp("families")
    return lambda name: build_family(name, root)


def snapshot(root: Path) -> dict[str, bytes]:
    """Every file under ``root`` with its bytes (to assert that a failed command touched nothing)."""
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture
def quiet_libraries():
    """No progress bars or library warnings: stderr holds only what poolft itself says."""
    import logging

    import datasets
    import transformers

    datasets.disable_progress_bars()
    transformers.logging.disable_progress_bar()
    verbosity = transformers.logging.get_verbosity()
    transformers.logging.set_verbosity_error()
    accelerate_level = logging.getLogger("accelerate").level
    logging.getLogger("accelerate").setLevel(logging.ERROR)
    yield
    datasets.enable_progress_bars()
    transformers.logging.enable_progress_bar()
    transformers.logging.set_verbosity(verbosity)
    logging.getLogger("accelerate").setLevel(accelerate_level)
