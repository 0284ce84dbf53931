"""The user's own sequence files: ``.ts`` (the UCR/UEA archive's format), long-format ``.csv`` (one row
per time step) and ``.npz`` arrays, read into the same ``SequenceData`` / ``Splits`` as the shipped
datasets, with the task decided from the targets and one clear error per bad file.

    raw.py      what every reader returns (RawSet), the one error type, missing-value filling
    tabular.py  long-format CSV: id / time / target / feature columns
    tsfile.py   .ts through aeon's own reader (and writer, for ``rnnserve datasets --export``)
    arrays.py   .npz: ``X`` ragged (object array) or padded with ``lengths``, and ``y``
    task.py     classification or regression from the targets, and the rule that decided
    source.py   DataFiles (the files and options) -> Splits, the split it made, what history.json records
    export.py   a shipped dataset written as .ts, .csv and .npz files
"""
