"""The model bundle contract, torch-free: what ``rnnserve.export`` writes and ``rnnserve.service``
reads, so neither depends on the other and the server never loads the training stack.

- ``manifest``: the bundle directory in the BentoML model store, its ``manifest.json`` (formats 1
  and 2), sha256 verification, loading, the streaming section (``StreamingSpec``)
- ``signature``: the model's inputs and outputs as data (``TensorSpec``), with the wire names
  mapped from the graph's own names in one place
- ``batch``: the padded batch every graph of a bundle takes (right-padded ``x`` with ``lengths``)
- ``reference``: the reference statistics that drift monitoring compares live traffic against"""
