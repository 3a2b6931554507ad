"""Image data sets read from local files in their standard formats, plus the embedded MNIST subset."""
