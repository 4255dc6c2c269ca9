"""The reference tutorial's code, as published ("transfer learning with TensorFlow Hub" on
rock_paper_scissors), for timing rps's main command against it (benchmarks.main_command).

    TFDS_DATA_DIR=../shared/offline/tfds TFHUB_CACHE_DIR=../shared/offline/tfhub python -m benchmarks.tutorial

Written from the tutorial's steps, top to bottom, with its known defects kept on purpose: they
are part of what it costs (and not of what rps does). Its shuffle reshuffles on every iteration,
so validation and test overlap training across epochs; it pairs softmax outputs with
``from_logits=True``; its ``.cache()`` result is discarded, so every epoch decodes and resizes
every image and runs the backbone on it. Only ``TF_USE_LEGACY_KERAS=1`` is added (hub layers need
tf-keras today) and ``--val``/``--test``/``--out`` (for tiny smoke data and a scratch folder).
Not part of rps: nothing imports it.
"""

from __future__ import annotations

import argparse
import os

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")

HANDLE = "https://tfhub.dev/google/tf2-preview/mobilenet_v2/feature_vector/4"
IMAGE_SIZE, BATCH_SIZE, EPOCHS = 224, 64, 2


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--val", type=int, default=600)
    parser.add_argument("--test", type=int, default=400)
    parser.add_argument("--out", default="tutorial_out", help="folder for the figure and the SavedModel")
    args = parser.parse_args(argv)

    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np
    import tensorflow as tf
    import tensorflow_datasets as tfds
    import tensorflow_hub as hub

    dataset, info = tfds.load("rock_paper_scissors", with_info=True, as_supervised=True)
    class_names = info.features["label"].names
    full = dataset["train"].concatenate(dataset["test"])
    n = info.splits["train"].num_examples + info.splits["test"].num_examples
    full = full.shuffle(n)  # reshuffle_each_iteration=True: the tutorial's leak, kept
    validation = full.take(args.val)
    test = full.skip(args.val).take(args.test)
    train = full.skip(args.val + args.test)

    def format_image(image, label):
        image = tf.cast(image, tf.float32) / 255.0
        image = tf.image.resize(image, (IMAGE_SIZE, IMAGE_SIZE))
        return image, tf.one_hot(label, len(class_names))

    train_batches = train.map(format_image).batch(BATCH_SIZE).prefetch(1)
    validation_batches = validation.map(format_image).batch(BATCH_SIZE).prefetch(1)
    test_batches = test.map(format_image).batch(BATCH_SIZE)
    train_batches.cache()  # as in the tutorial: the cached dataset is not kept, so nothing is cached

    model = tf.keras.Sequential([
        hub.KerasLayer(HANDLE, input_shape=(IMAGE_SIZE, IMAGE_SIZE, 3), trainable=False),
        tf.keras.layers.Dropout(0.5),
        tf.keras.layers.Dense(len(class_names), activation="softmax"),
    ])
    model.summary()
    model.compile(optimizer=tf.keras.optimizers.Adam(),
                  loss=tf.keras.losses.CategoricalCrossentropy(from_logits=True),  # the tutorial's mismatch
                  metrics=["accuracy"])
    model.fit(train_batches, epochs=EPOCHS, validation_data=validation_batches)
    loss, accuracy = model.evaluate(test_batches)
    print(f"test accuracy {accuracy:.4f}")

    images, labels = next(iter(test_batches))
    predicted = np.argmax(model.predict(images[:10]), axis=-1)
    actual = np.argmax(labels[:10], axis=-1)
    os.makedirs(args.out, exist_ok=True)
    plt.figure(figsize=(10, 4))
    for i in range(len(predicted)):
        plt.subplot(2, 5, i + 1)
        plt.imshow(images[i])
        plt.title(f"{class_names[actual[i]]} / {class_names[predicted[i]]}",
                  color="green" if actual[i] == predicted[i] else "red")
        plt.axis("off")
    plt.savefig(os.path.join(args.out, "predictions.png"))
    model.save(os.path.join(args.out, "saved_model"))


if __name__ == "__main__":
    main()
