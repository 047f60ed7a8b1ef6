"""The uploader service: stream the body in, check it is an image, compress it, store it."""
