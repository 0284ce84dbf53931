"""Wire formats: the plain JSON API and the Open Inference Protocol v2 (JSON, binary tensor extension,
protobuf tensors), with the input checks they share. Codecs decode into ``list[np.ndarray]`` and
encode a ``types.Prediction``; they know nothing of the bundle or the scheduler."""
