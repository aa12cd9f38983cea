"""The one error every reader and data format raises for bad input."""

from __future__ import annotations

import os


class BadRecordError(Exception):
    """A data record that cannot be used: names the file and, where known, the field.

    ``str(err)`` reads ``"<path>: <field>: <message>"`` (the field part is left out
    when it is None), e.g. ``"train.json: ['https://...'].Samples[0].image_data_path:
    missing"``. The constructor arguments are kept in ``args`` so the error pickles
    across worker processes.
    """

    def __init__(self, path: str | os.PathLike[str], field: str | None, message: str):
        super().__init__(os.fspath(path), field, message)
        self.path = os.fspath(path)
        self.field = field
        self.message = message

    def __str__(self) -> str:
        if self.field is None:
            return f"{self.path}: {self.message}"
        return f"{self.path}: {self.field}: {self.message}"
