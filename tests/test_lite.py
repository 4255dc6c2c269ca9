"""XNNPACK (TFLite via LiteRT) for frozen backbones, prediction and the served model (tiny data)."""

from __future__ import annotations

import base64
import io
import json

import numpy as np
import pytest

from conftest import TINY_SPLIT, compose, prepared_run
from rps.model.backbone import load_backbone, tf_forward
from rps.model.export import ExportedClassifier
from rps.model.head import build_classifier, build_head


@pytest.fixture(scope="module")
def backbone_and_images(tiny_backbone):
    backbone, _ = load_backbone(str(tiny_backbone), 32)
    images = np.random.default_rng(0).random((20, 32, 32, 3)).astype(np.float32)
    return backbone, images


def test_xnnpack_features_match_tensorflows(backbone_and_images, tmp_path):
    from rps.model import lite

    backbone, images = backbone_and_images
    content = lite.cached_conversion("k", lambda: lite.from_layer(backbone, 32), tmp_path)
    assert (tmp_path / "k.tflite").read_bytes() == content, "the conversion is cached"
    assert lite.cached_conversion("k", lambda: pytest.fail("converted twice"), tmp_path) == content
    xnnpack = lite.LiteModel(content)(images)  # batches of 8: 8, 8 and 4
    np.testing.assert_allclose(xnnpack, tf_forward(backbone)(images), atol=1e-4)
    assert lite.LiteModel(content)(images[:0]).shape == (0, 16)


def test_tensorflow_features_in_chunks_are_the_whole_batchs(backbone_and_images):
    from rps.model import lite

    backbone, images = backbone_and_images  # 20 images: chunks of 8, 8 and 4, in order
    calls = []
    chunks = lite.chunked(lambda chunk: calls.append(len(chunk)) or np.asarray(backbone(chunk)), images)
    assert calls == [8, 8, 4]
    whole = np.asarray(backbone(images, training=False))
    np.testing.assert_allclose(chunks, whole, rtol=1e-5)  # batch size changes float rounding
    np.testing.assert_allclose(tf_forward(backbone)(images), whole, rtol=1e-5)


@pytest.mark.parametrize("cache", [True, False])
def test_a_run_gives_the_same_results_with_either_engine(tiny_tfds, tiny_backbone, tmp_path, cache):
    from rps.training.pipeline import train_and_evaluate
    from rps.training.report import Reporter

    results = {}
    for engine in ("xnnpack", "tf"):
        cfg = compose(f"dataset.data_dir={tiny_tfds}", f"backbone.handle={tiny_backbone}", *TINY_SPLIT,
                      "backbone.image_size=32", "epochs=3", f"feature_cache.engine={engine}",
                      f"feature_cache.dir={tmp_path / 'cache'}", f"feature_cache.enabled={str(cache).lower()}")
        report = Reporter()
        out = train_and_evaluate(prepared_run(cfg), report)
        results[engine] = (out, report.recorded["tags"])
    (lite_out, lite_tags), (tf_out, tf_tags) = results["xnnpack"], results["tf"]
    if cache:
        assert lite_tags["feature_engine"].startswith("xnnpack (LiteRT ") and tf_tags["feature_engine"].startswith("tf")
        assert lite_tags["feature_cache_key"] != tf_tags["feature_cache_key"], "the engine is part of the key"
    for key in ("selection_val_accuracy", "selection_val_loss", "test_accuracy", "test_loss"):
        assert round(lite_out.metrics[key], 3) == round(tf_out.metrics[key], 3), key
    assert np.array_equal(lite_out.probs.argmax(1), tf_out.probs.argmax(1))


def test_a_backbone_that_does_not_convert_falls_back_to_tensorflow_and_says_why(tiny_tfds, tmp_path, caplog):
    from rps.training.pipeline import train_and_evaluate
    from rps.training.report import Reporter
    from rps.synthetic import save_tiny_backbone

    odd = save_tiny_backbone(tmp_path / "odd", tflite_ops=False)
    cfg = compose(f"dataset.data_dir={tiny_tfds}", f"backbone.handle={odd}", *TINY_SPLIT, "backbone.image_size=32",
                  "epochs=1", f"feature_cache.dir={tmp_path / 'cache'}")
    report = Reporter()
    out = train_and_evaluate(prepared_run(cfg), report)
    engine = report.recorded["tags"]["feature_engine"]
    assert engine.startswith("tf (XNNPACK unavailable: ConverterError") and "XNNPACK unavailable" in caplog.text
    assert report.recorded["tags"]["feature_cache"] == "built" and 0 <= out.metrics["test_accuracy"] <= 1


@pytest.fixture(scope="module")
def exported(backbone_and_images, tmp_path_factory):
    """An exported classifier (tiny backbone + untrained head) as a run writes it."""

    from rps.model.export import model_info
    from rps.model.export import INFO_FILE

    backbone, _ = backbone_and_images
    clf = build_classifier(backbone, build_head(16, 3, compose().head), 32)
    saved = tmp_path_factory.mktemp("export") / "saved_model"
    ExportedClassifier(*clf.layers, ["rock", "paper", "scissors"], 32).save(str(saved))
    (saved / INFO_FILE).write_text(json.dumps(model_info(["rock", "paper", "scissors"], 32)))
    return saved, clf


def test_the_classifier_takes_photos_in_every_form_and_agrees_with_training(exported):
    import pandas as pd
    from PIL import Image

    from rps.data.images import preprocess
    from rps.inference.classifier import Classifier
    from rps.synthetic import tiny_image

    saved, clf = exported
    photo = tiny_image(2, np.random.default_rng(3), 75)  # uint8, not the model's size
    png = io.BytesIO()
    Image.fromarray(photo).save(png, "PNG")
    as_trained = preprocess(photo, 32).numpy()[None]
    expected = clf(as_trained, training=False).numpy()
    xnnpack, tf_engine = Classifier(saved), Classifier(saved, engine="tf")
    assert xnnpack.engine.startswith("xnnpack") and tf_engine.engine == "tf"
    forms = {"float batch": as_trained, "uint8 image": photo, "uint8 batch": photo[None], "list of arrays": [photo],
             "png bytes": png.getvalue(), "base64 text": base64.b64encode(png.getvalue()).decode(),
             "dataframe column": pd.DataFrame({"image": [base64.b64encode(png.getvalue()).decode()]})}
    for name, data in forms.items():
        for classifier in (xnnpack, tf_engine):
            np.testing.assert_allclose(classifier(data), expected, atol=1e-4, err_msg=name)
    with pytest.raises(ValueError, match="base64"):
        xnnpack("not an image")


def test_the_classifier_names_the_bad_item_and_never_decodes_a_bomb(exported):
    """Requests are decoded a chunk at a time; a bad item is named by its place in the whole
    request, in one line; the served model answers it as MLflow's HTTP 400 with that line."""
    from PIL import Image

    from rps.inference.classifier import CHUNK, Classifier, InputError, RequestError, RpsModel
    from rps.synthetic import bomb_png, tiny_image

    saved, _ = exported
    png = io.BytesIO()
    Image.fromarray(tiny_image(1, np.random.default_rng(4), 40)).save(png, "PNG")
    photo = base64.b64encode(png.getvalue()).decode()
    classifier = Classifier(saved, max_pixels=40 * 40)
    many = classifier([photo] * (2 * CHUNK + 3))
    assert many.shape == (2 * CHUNK + 3, 3) and np.allclose(many, many[0])
    assert classifier([]).shape == (0, 3)
    late = [photo] * (CHUNK + 5) + [base64.b64encode(bomb_png()).decode()]
    with pytest.raises(InputError, match=rf"^input item {CHUNK + 5}: the image is 20000x20000 pixels"):
        classifier(late)
    with pytest.raises(InputError, match=r"^input item 0: the image is 41x40 pixels"):
        classifier([np.zeros((40, 41, 3), np.uint8)])
    with pytest.raises(InputError, match="expected an image or a list of images, not dict"):
        classifier({"image": photo})
    model = RpsModel()
    model.classifier = classifier
    with pytest.raises(RequestError) as refused:
        model.predict(None, [photo, "bm90IGFuIGltYWdl"])
    refused.value.message = "Failed to predict data '<the request>'. \nError: ..."  # what MLflow's server does
    assert refused.value.get_http_status_code() == 400
    assert json.loads(refused.value.serialize_as_json())["message"] == \
        "input item 1: not an image file TensorFlow decodes (JPEG, PNG, BMP or GIF)"
