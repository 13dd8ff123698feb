"""The one error raised when a dataset's files are not where the pipeline looks for them."""


class MissingDataError(ValueError):
    """Raised when a dataset is neither prepared in `data_dir` nor obtainable (files, network).

    Its message names the files to get, where to put them and the flag that points at them.
    """
