"""The compatibility matrix: every backbone family x every head, through everything a user runs.

For each family of ``tests/families.py`` (a tiny double saved with that family's own tokenizer or
image processor; ``test_family_double_has_its_own_preprocessor`` checks it is one) and each head of
``poolft.available_poolers()``:

- **train**: ``poolft train`` runs 2 optimiser steps and writes the model;
- **Auto**: ``AutoModelFor*Classification`` reloads it (no missing keys), and one input's logits
  are the same alone and in a batch, left- and right-padded (the side asserted on the mask);
- **pipeline**: ``transformers.pipeline`` with its tokenizer forced to each side (asserted on the
  masks the model receives) gives each input the probabilities of its own forward;
- **predict**, **eval**: ``poolft predict`` (saved tokenizer padding left, then right) and
  ``poolft eval`` (left) plus the run's own final evaluation (right) give each input the
  probabilities and loss of its own forward, in padded batches;
- **stock head**: ``--model.stock_head true`` trains and reloads as the family's transformers
  classifier where one exists, and is refused in one line (naming the family) where none does;
- **2-proc**: one ``torchrun --nproc_per_node 2`` trains every family with the ``mean`` head.

The right values are one-input-at-a-time forwards of the reloaded model, with the family's own
preprocessor (for images the saved image processor, as ``pipeline`` uses it), never poolft's batched
paths. ``python tests/test_compat_matrix.py`` rewrites the README's "Supported families" block from
``FAMILIES`` and this file's parametrisation; ``test_readme_families_block_is_current`` keeps it so.
"""

from __future__ import annotations

import contextlib
import csv
import json
import os
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest  # noqa: E402
import torch  # noqa: E402
import transformers  # noqa: E402
from datasets_for_tests import write_image_folder, write_sentiment_csv  # noqa: E402
from families import FAMILIES  # noqa: E402
from PIL import Image  # noqa: E402
from transformers import (  # noqa: E402
    AutoImageProcessor,
    AutoModel,
    AutoModelForImageClassification,
    AutoModelForSequenceClassification,
    AutoTokenizer,
    pipeline,
)

import poolft  # noqa: E402
from poolft.cli import main  # noqa: E402

HEADS = poolft.available_poolers()
#: (family, head) pairs refused in one line instead of trained: a SigLIP tower has no class token
REFUSED_HEADS = {("siglip-vision", "cls"): "class token", ("siglip-vision", "clsmean"): "class token"} | {
    # text varies in length; flatten concatenates one fixed patch grid
    (name, "flatten"): "fixed patch grid"
    for name, family in FAMILIES.items()
    if family.modality == "text"
}
STOCK_FAMILIES = [name for name, family in FAMILIES.items() if family.stock_classifier]
NO_STOCK_FAMILIES = [name for name, family in FAMILIES.items() if not family.stock_classifier]
CASES = [(family, head) for family in FAMILIES for head in HEADS if (family, head) not in REFUSED_HEADS]

#: texts of different lengths (words the tiny vocabularies know), for predict and pipeline
TEXTS = [
    "loved it",
    "the actors were not bad but the ending was really the worst",
    "A boring film with awful acting and a dull plot!",
    "great",
    "the movie was great",
]
ATOL = 1e-5


# ---------------------------------------------------------------- data and runs (built once)


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """Tiny models run fastest on one thread (and do not fight other processes for the cores)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def matrix_data(tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    """8 training and 4 evaluation rows per modality (texts of 1-13 words; 20 x 24 px images)."""
    root = tmp_path_factory.mktemp("matrix-data")
    return {
        "text": write_sentiment_csv(root / "text", train_size=8, eval_size=4),
        "image": write_image_folder(root / "images", {"train": 4, "validation": 2}),
    }


@pytest.fixture(scope="session")
def runs(tmp_path_factory: pytest.TempPathFactory, family_dir, matrix_data):
    """``runs(family, head)``: the folder of a 2-step ``poolft train`` run (trained once, or its error)."""
    root = tmp_path_factory.mktemp("matrix-runs")
    done: dict[tuple[str, str], Path | str] = {}

    def run(family: str, head: str) -> Path:
        if (family, head) not in done:
            output = root / f"{family}-{head}"
            code, stderr = train_quietly(family_dir(family), FAMILIES[family].modality, matrix_data, output, head)
            done[family, head] = output if code == 0 else f"poolft train exited {code}: {stderr}"
        result = done[family, head]
        if isinstance(result, str):
            pytest.fail(f"{family} / {head}: training failed, nothing to test ({result})", pytrace=False)
        return result

    return run


def train_arguments(backbone: Path, modality: str, data: dict, output: Path, head: str) -> list[str]:
    source = (
        [f"--data.data_files={json.dumps(data['text'])}", "--data.text_column=text"]
        if modality == "text"
        else [f"--data.path={data['image']}"]
    )
    head_choice = ["--model.stock_head=true"] if head == "stock" else [f"--model.pooler={head}"]
    return [
        "train",
        *source,
        f"--model.backbone={backbone}",
        *head_choice,
        f"--train.output_dir={output}",
        "--train.max_steps=2",
        "--train.batch_size=4",
        "--train.head_learning_rate=0.05",  # logits well away from 0, so batch effects show
        "--train.mixed_precision=no",
        "--train.progress=false",
        "--train.save_at_end=false",
        "--train.save_best_model=false",
        "--train.torch_threads=1",
    ]


def train_quietly(backbone: Path, modality: str, data: dict, output: Path, head: str) -> tuple[int, str]:
    """Run ``poolft train`` in-process; ``(exit code, stderr's last line or the exception)``."""
    import io

    stderr = io.StringIO()
    try:
        with contextlib.redirect_stderr(stderr), contextlib.redirect_stdout(io.StringIO()):
            code = main([*train_arguments(backbone, modality, data, output, head), "--debug"])
    except Exception as error:  # the matrix reports a traceback as a failed cell, with its last line
        return 1, f"{type(error).__name__}: {str(error).strip().splitlines()[0] if str(error).strip() else ''}"
    lines = [line for line in stderr.getvalue().splitlines() if line.strip()]
    return code, lines[-1] if lines else ""


def text_rows(data: dict, split: str) -> list[dict[str, str]]:
    with open(data["text"][split], newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def image_rows(data: dict, split: str) -> list[tuple[Path, str]]:
    return [(path, path.parent.name) for path in sorted(Path(data["image"], split).glob("*/*.png"))]


# ---------------------------------------------------------------- right values, one input at a time


@torch.no_grad()
def single_text_logits(model, tokenizer, texts: list[str]) -> torch.Tensor:
    """``(texts, labels)``: each text through the model alone, unpadded."""
    return torch.cat([model(**tokenizer(text, truncation=True, return_tensors="pt")).logits for text in texts])


@torch.no_grad()
def single_image_logits(model, processor, paths: list[Path]) -> torch.Tensor:
    """``(images, labels)``: each image through the saved processor (as ``pipeline`` does) and the model."""
    logits = []
    for path in paths:
        image = Image.open(path).convert("RGB")
        logits.append(model(pixel_values=processor(image, return_tensors="pt")["pixel_values"]).logits)
    return torch.cat(logits)


_REFERENCES: dict[tuple, torch.Tensor] = {}


def reference(run: Path, modality: str, inputs: list) -> torch.Tensor:
    """One-input-at-a-time logits ``(inputs, labels)`` of the model saved in ``run`` (computed once)."""
    key = (str(run), tuple(map(str, inputs)))
    if key not in _REFERENCES:
        _REFERENCES[key] = one_at_a_time(run, modality, inputs)
    return _REFERENCES[key].clone()


def one_at_a_time(run: Path, modality: str, inputs: list) -> torch.Tensor:
    model, preprocessor = load_reference(run, modality)
    if modality == "text":
        return single_text_logits(model, preprocessor, inputs)
    return single_image_logits(model, preprocessor, inputs)


def load_reference(run: Path, modality: str):
    if modality == "text":
        return AutoModelForSequenceClassification.from_pretrained(run).eval(), AutoTokenizer.from_pretrained(run)
    return AutoModelForImageClassification.from_pretrained(run).eval(), AutoImageProcessor.from_pretrained(
        run, backend="pil"
    )


def prediction_inputs(modality: str, data: dict) -> list:
    return list(TEXTS) if modality == "text" else [path for path, _ in image_rows(data, "validation")]


def poolft_class(modality: str) -> type:
    return poolft.PoolftForSequenceClassification if modality == "text" else poolft.PoolftForImageClassification


@contextlib.contextmanager
def padding_side_on_disk(run: Path, side: str | None):
    """The run's saved tokenizer pads on ``side`` while the block runs (as a Hub tokenizer config says)."""
    if side is None:  # images: nothing to pad
        yield
        return
    path = run / "tokenizer_config.json"
    original = path.read_text(encoding="utf-8")
    settings = json.loads(original)
    settings["padding_side"] = side
    path.write_text(json.dumps(settings), encoding="utf-8")
    try:
        assert AutoTokenizer.from_pretrained(run).padding_side == side  # what poolft will load
        yield
    finally:
        path.write_text(original, encoding="utf-8")


@contextlib.contextmanager
def recorded_masks(model_class: type):
    """Every ``attention_mask`` that ``model_class.forward`` receives while the block runs."""
    masks: list[torch.Tensor] = []
    original = model_class.forward

    def forward(self, *args, **kwargs):
        if kwargs.get("attention_mask") is not None:
            masks.append(kwargs["attention_mask"].detach().clone())
        return original(self, *args, **kwargs)

    model_class.forward = forward
    try:
        yield masks
    finally:
        model_class.forward = original


def assert_padded_on(side: str | None, masks: list[torch.Tensor]) -> None:
    """At least one batch was padded, and every padded batch on ``side`` (None: either side)."""
    padded = [mask for mask in masks if not bool(mask.bool().all())]
    assert padded, "no batch was padded, so padding was not exercised"
    if side is None:
        return
    column = 0 if side == "left" else -1
    for mask in padded:
        assert not bool(mask[:, column].bool().all()), f"batch is not padded on the {side}: {mask.tolist()}"


def sides(modality: str) -> list[str | None]:
    return ["left", "right"] if modality == "text" else [None]


# ---------------------------------------------------------------- the doubles are what they claim

#: the first and last token a family's tokenizer puts around one text
TEXT_FRAME = {"roberta": ("<s>", "</s>"), "xlm-roberta": ("<s>", "</s>")}


@pytest.mark.parametrize("family", list(FAMILIES))
def test_family_double_has_its_own_preprocessor(family, family_dir):
    """The saved preprocessor is the family's class with its special tokens or its crop rule."""
    folder, spec = family_dir(family), FAMILIES[family]
    model = AutoModel.from_pretrained(folder)
    assert type(model).__name__ == spec.model_class
    if spec.modality == "text":
        tokenizer = AutoTokenizer.from_pretrained(folder)
        assert type(tokenizer) is getattr(transformers, spec.preprocessor_class)  # v5: some are aliases
        tokens = tokenizer.convert_ids_to_tokens(tokenizer(TEXTS[1])["input_ids"])
        assert (tokens[0], tokens[-1]) == TEXT_FRAME.get(family, ("[CLS]", "[SEP]"))
        assert tokenizer.unk_token not in tokens and tokenizer.padding_side == "right"
        assert ("token_type_ids" in tokenizer.model_input_names) == (family in ("bert", "electra", "deberta-v2"))
    else:
        processor = AutoImageProcessor.from_pretrained(folder, backend="pil")
        assert type(processor).__name__ in (spec.preprocessor_class, spec.preprocessor_class + "Pil")
        pixels = processor(Image.new("RGB", (24, 20)), return_tensors="pt")["pixel_values"]
        assert tuple(pixels.shape[-2:]) == (model.config.image_size, model.config.image_size)
        with torch.no_grad():
            tokens = model(pixel_values=pixels).last_hidden_state.shape[1]
        assert tokens == spec.prefix_tokens + (model.config.image_size // model.config.patch_size) ** 2


# ---------------------------------------------------------------- the cells


@pytest.mark.parametrize(("family", "head"), CASES)
def test_trains_two_steps(family, head, runs):
    run = runs(family, head)
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["global_step"] == 2
    assert metrics["final"]["samples"] == 4
    assert (run / "model.safetensors").is_file() and (run / "config.json").is_file()


@pytest.mark.parametrize(("family", "head"), CASES)
def test_auto_reload_and_batch_invariance(family, head, runs, matrix_data):
    run, modality = runs(family, head), FAMILIES[family].modality
    auto = AutoModelForSequenceClassification if modality == "text" else AutoModelForImageClassification
    model, info = auto.from_pretrained(run, output_loading_info=True)
    model.eval()
    expected_class = (
        poolft.PoolftForSequenceClassification if modality == "text" else poolft.PoolftForImageClassification
    )
    assert type(model) is expected_class
    assert model.config.pooler == head and model.config.encoder_config.model_type == FAMILIES[family].model_type
    assert not info["missing_keys"] and not info["unexpected_keys"]

    inputs = prediction_inputs(modality, matrix_data)
    alone = reference(run, modality, inputs)
    if modality == "text":
        tokenizer = AutoTokenizer.from_pretrained(run)
        for side in ("left", "right"):
            batch = tokenizer(inputs, padding=True, truncation=True, padding_side=side, return_tensors="pt")
            assert_padded_on(side, [batch["attention_mask"]])
            with torch.no_grad():
                batched = model(**batch).logits
            torch.testing.assert_close(batched, alone, atol=ATOL, rtol=0, msg=lambda m, s=side: f"{s}-padded: {m}")
    else:
        processor = AutoImageProcessor.from_pretrained(run, backend="pil")
        images = [Image.open(path).convert("RGB") for path in inputs]
        with torch.no_grad():
            batched = model(pixel_values=processor(images, return_tensors="pt")["pixel_values"]).logits
        torch.testing.assert_close(batched, alone, atol=ATOL, rtol=0)


@pytest.mark.parametrize(("family", "head"), CASES)
def test_pipeline(family, head, runs, matrix_data):
    run, modality = runs(family, head), FAMILIES[family].modality
    inputs = prediction_inputs(modality, matrix_data)
    expected = reference(run, modality, inputs).softmax(-1)
    task = "text-classification" if modality == "text" else "image-classification"
    classify = pipeline(task, model=str(run))
    labels = [classify.model.config.id2label[i] for i in range(expected.shape[1])]
    for side in sides(modality):
        if side is not None:
            classify.tokenizer.padding_side = side
        with recorded_masks(type(classify.model)) as masks:
            outputs = classify([str(x) for x in inputs], top_k=None, batch_size=len(inputs))
        if side is not None:
            assert_padded_on(side, masks)
        scores = torch.tensor([[{o["label"]: o["score"] for o in out}[label] for label in labels] for out in outputs])
        torch.testing.assert_close(scores, expected, atol=ATOL, rtol=0, msg=lambda m, s=side: f"{s}-padded: {m}")


@pytest.mark.parametrize(("family", "head"), CASES)
def test_predict(family, head, runs, matrix_data, capsys):
    run, modality = runs(family, head), FAMILIES[family].modality
    inputs = prediction_inputs(modality, matrix_data)
    expected = reference(run, modality, inputs).softmax(-1)
    model_class = poolft_class(modality)
    arguments = ["predict", "--model", str(run), "--json"]
    arguments += list(inputs) if modality == "text" else ["--image", *map(str, inputs)]
    for side in sides(modality):
        capsys.readouterr()
        with (
            padding_side_on_disk(run, side),
            recorded_masks(model_class) as masks,
        ):
            assert main(arguments) == 0, capsys.readouterr().err
        if side is not None:  # poolft's collator may pad on either side; a text's output must not change
            assert_padded_on(None, masks)
        lines = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith("{")]
        assert [line["input"] for line in lines] == [str(x) for x in inputs]
        config = json.loads((run / "config.json").read_text())
        best = expected.max(dim=-1)
        assert [line["label"] for line in lines] == [config["id2label"][str(int(i))] for i in best.indices]
        torch.testing.assert_close(
            torch.tensor([line["probability"] for line in lines], dtype=best.values.dtype),
            best.values,
            atol=ATOL,
            rtol=0,
            msg=lambda m, s=side: f"{s}-padded: {m}",
        )


@pytest.mark.parametrize(("family", "head"), CASES)
def test_eval(family, head, runs, matrix_data, capsys):
    """``poolft eval`` with the tokenizer forced to pad on the left, and the run's own final
    evaluation (the tokenizer's side, right for every family here), against one-input forwards."""
    run, modality = runs(family, head), FAMILIES[family].modality
    if modality == "text":
        rows = text_rows(matrix_data, "validation")
        inputs, names = [row["text"] for row in rows], [row["label"] for row in rows]
    else:
        inputs, names = map(list, zip(*image_rows(matrix_data, "validation"), strict=True))
    logits = reference(run, modality, inputs)
    label2id = json.loads((run / "config.json").read_text())["label2id"]
    labels = torch.tensor([label2id[name] for name in names])
    expected_loss = float(torch.nn.functional.cross_entropy(logits, labels))
    expected_accuracy = float((logits.argmax(-1) == labels).float().mean())

    in_training = json.loads((run / "metrics.json").read_text())["final"]
    assert in_training["accuracy"] == pytest.approx(expected_accuracy)
    assert in_training["loss"] == pytest.approx(expected_loss, abs=ATOL), "the training run's final evaluation"

    side = "left" if modality == "text" else None
    capsys.readouterr()
    with padding_side_on_disk(run, side), recorded_masks(poolft_class(modality)) as masks:
        assert main(["eval", "--model", str(run)]) == 0, capsys.readouterr().err
    if side is not None:  # poolft's collator may pad on either side; a text's output must not change
        assert_padded_on(None, masks)
    metrics = json.loads(capsys.readouterr().out)
    assert metrics["samples"] == len(inputs)
    assert metrics["accuracy"] == pytest.approx(expected_accuracy)
    assert metrics["loss"] == pytest.approx(expected_loss, abs=ATOL), "poolft eval, tokenizer padding on the left"


@pytest.mark.parametrize("family", STOCK_FAMILIES)
def test_stock_head(family, family_dir, matrix_data, tmp_path, capsys):
    """The family's own transformers classifier trains, reloads as that class, and predicts."""
    modality = FAMILIES[family].modality
    output = tmp_path / "stock"
    code, stderr = train_quietly(family_dir(family), modality, matrix_data, output, "stock")
    assert code == 0, stderr
    auto = AutoModelForSequenceClassification if modality == "text" else AutoModelForImageClassification
    model = auto.from_pretrained(output)
    assert type(model).__name__ == FAMILIES[family].stock_classifier
    inputs = prediction_inputs(modality, matrix_data)
    expected = reference(output, modality, inputs).softmax(-1).max(dim=-1).values
    capsys.readouterr()
    arguments = ["predict", "--model", str(output), "--json"]
    arguments += list(inputs) if modality == "text" else ["--image", *map(str, inputs)]
    assert main(arguments) == 0, capsys.readouterr().err
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith("{")]
    torch.testing.assert_close(
        torch.tensor([line["probability"] for line in lines], dtype=expected.dtype), expected, atol=ATOL, rtol=0
    )


def assert_one_line_error(code: int, stderr: str, family: str, backbone: Path, missing: str) -> None:
    """Exit 2 and one ``poolft: error:`` line that names the family (not only its folder) and what it lacks."""
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert code == 2, stderr
    assert len(lines) == 1 and lines[0].startswith("poolft: error: "), stderr
    message = lines[0].replace(str(backbone), "<backbone>").lower()  # the folder is named after the family
    spec = FAMILIES[family]
    names = {spec.model_type, spec.title, spec.model_class, spec.model_class.replace("Model", "Config")}
    assert any(name.lower() in message for name in names), f"the error does not name the family: {lines[0]}"
    assert missing in message, f"the error does not say that the {missing} is missing: {lines[0]}"


@pytest.mark.parametrize("family", NO_STOCK_FAMILIES)
def test_stock_head_without_a_stock_classifier_is_one_line_error(
    family, family_dir, matrix_data, tmp_path, capsys, quiet_libraries
):
    arguments = train_arguments(family_dir(family), FAMILIES[family].modality, matrix_data, tmp_path / "run", "stock")
    capsys.readouterr()
    code = main(arguments)
    assert_one_line_error(code, capsys.readouterr().err, family, family_dir(family), "classifier")
    assert not [path for path in tmp_path.rglob("*") if path.is_file()]  # no file written


@pytest.mark.parametrize(("family", "head"), list(REFUSED_HEADS))
def test_head_the_family_cannot_feed_is_one_line_error(
    family, head, family_dir, matrix_data, tmp_path, capsys, quiet_libraries
):
    arguments = train_arguments(family_dir(family), FAMILIES[family].modality, matrix_data, tmp_path / "run", head)
    capsys.readouterr()
    code = main(arguments)
    assert_one_line_error(code, capsys.readouterr().err, family, family_dir(family), REFUSED_HEADS[family, head])


# ---------------------------------------------------------------- two processes, every family in one launch

#: the head every family trains with on 2 processes (tests/training/test_train_distributed.py
#: checks the loop itself on 2 processes: same losses, rows and evaluations as on 1)
TWO_PROCESS_HEAD = "mean"


@pytest.fixture(scope="session")
def two_process_runs(tmp_path_factory: pytest.TempPathFactory, family_dir, matrix_data) -> Path:
    """One ``torchrun --nproc_per_node 2`` (gloo) that trains every family's double in turn.

    One launch for all families: starting the processes costs more than 15 tiny runs. Each run's
    exit code per rank is written next to its folder (``<family>.rank<r>.exit``).
    """
    import subprocess

    root = tmp_path_factory.mktemp("matrix-2proc")
    plan = [
        train_arguments(family_dir(name), family.modality, matrix_data, root / name, TWO_PROCESS_HEAD)
        for name, family in FAMILIES.items()
    ]
    (root / "plan.json").write_text(json.dumps(plan), encoding="utf-8")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--standalone"]
    result = subprocess.run(
        [*torchrun, __file__, "--train-each", str(root / "plan.json")],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    (root / "torchrun.log").write_text(result.stdout + result.stderr, encoding="utf-8")
    return root


def train_each(plan: Path) -> None:
    """torchrun worker: every ``poolft train`` argument list of ``plan`` in turn, exit codes to files."""
    rank = int(os.environ.get("RANK", "0"))
    for arguments in json.loads(plan.read_text(encoding="utf-8")):
        output = Path(next(a for a in arguments if a.startswith("--train.output_dir=")).split("=", 1)[1])
        try:
            code = main(arguments)
        except Exception as error:  # recorded, and the next family still runs
            code = f"{type(error).__name__}: {str(error).strip().splitlines()[0] if str(error).strip() else ''}"
        (output.parent / f"{output.name}.rank{rank}.exit").write_text(str(code), encoding="utf-8")


@pytest.mark.parametrize("family", list(FAMILIES))
def test_two_processes(family, two_process_runs, runs, matrix_data):
    """On 2 processes: the rows of one process trained, each evaluation row counted once, at its right loss."""
    run, modality = two_process_runs / family, FAMILIES[family].modality
    codes = [(two_process_runs / f"{family}.rank{rank}.exit") for rank in (0, 1)]
    log = (two_process_runs / "torchrun.log").read_text(encoding="utf-8")
    assert all(code.is_file() for code in codes), f"torchrun did not reach {family}: {log[-2000:]}"
    assert [code.read_text() for code in codes] == ["0", "0"], log[-2000:]
    two = json.loads((run / "metrics.json").read_text())
    one = json.loads((runs(family, TWO_PROCESS_HEAD) / "metrics.json").read_text())
    assert two["num_processes"] == 2 and one["num_processes"] == 1
    assert two["train_samples_seen"] == one["train_samples_seen"] == 8
    if modality == "text":
        rows = text_rows(matrix_data, "validation")
        inputs, names = [row["text"] for row in rows], [row["label"] for row in rows]
    else:
        inputs, names = map(list, zip(*image_rows(matrix_data, "validation"), strict=True))
    logits = reference(run, modality, inputs)
    label2id = json.loads((run / "config.json").read_text())["label2id"]
    labels = torch.tensor([label2id[name] for name in names])
    assert two["final"]["samples"] == len(inputs)
    assert two["final"]["loss"] == pytest.approx(float(torch.nn.functional.cross_entropy(logits, labels)), abs=ATOL)


# ---------------------------------------------------------------- the README table

README = Path(__file__).resolve().parents[1] / "README.md"
START, END = "<!-- poolft-families:start -->", "<!-- poolft-families:end -->"


def render_families_block() -> str:
    """The README's "Supported families" table, from ``FAMILIES`` and what this file tests."""
    lines = [
        START,
        "| family | encoder + preprocessor (settings) | train | Auto | pipeline | predict | eval | stock head "
        "| 2-proc |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name, family in FAMILIES.items():
        heads = [head for head in HEADS if (name, head) not in REFUSED_HEADS]
        refused = [f"`{head}` refused ({REFUSED_HEADS[name, head]})" for head in HEADS if (name, head) in REFUSED_HEADS]
        trained = f"{len(heads)} heads" + (f"; {', '.join(refused)}" if refused else "")
        stock = f"`{family.stock_classifier}`" if family.stock_classifier else "none: one-line error"
        lines.append(
            f"| {family.title} | `{family.model_class}` + `{family.preprocessor_class}` ({family.settings}) "
            f"| {trained} | ✓ | ✓ | ✓ | ✓ | {stock} | ✓ `{TWO_PROCESS_HEAD}` |"
        )
    lines.append(END)
    return "\n".join(lines)


def readme_block(text: str) -> str:
    start, end = text.index(START), text.index(END) + len(END)
    return text[start:end]


def test_readme_families_block_is_current():
    assert readme_block(README.read_text(encoding="utf-8")) == render_families_block(), (
        "README.md's families table is stale; run `python tests/test_compat_matrix.py`"
    )


if __name__ == "__main__":
    if sys.argv[1:2] == ["--train-each"]:  # the worker of two_process_runs, under torchrun
        train_each(Path(sys.argv[2]))
        sys.exit(0)
    text = README.read_text(encoding="utf-8")  # rewrite the README block
    README.write_text(text.replace(readme_block(text), render_families_block()), encoding="utf-8")
    sys.exit(0)
