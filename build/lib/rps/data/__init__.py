"""Data: where a dataset is and how big (sources.py, no TensorFlow), its encoded examples
(examples.py), how an image becomes model input (images.py), tf.data pipelines and augmentation
(pipelines.py), which examples go where (splits.py), and tiny generated data for trying rps
offline (synthetic.py). Imports only rps.common."""
