"""Sparse export: a trained model as one compact safetensors file that carries its preprocessing,
rebuilt from weights only by a registry of ssmoe's own classes, and run with sparse (CSR) kernels
where they are faster.

- file.py: the format, `export_model`, `read_export`, `load_model` (see its docstring);
- kernels.py: CSR layers and `use_sparse_kernels`.
"""

from ssmoe_cli.export.file import (
    FORMAT,
    ExportFile,
    ExportInfo,
    Preprocessed,
    export_model,
    index_dtype,
    load_model,
    read_export,
)
from ssmoe_cli.export.kernels import (
    CSRExpertLinear,
    CSRLinear,
    dispatch_choices,
    kernels,
    to_csr,
    use_sparse_kernels,
)

__all__ = [
    "FORMAT",
    "CSRExpertLinear",
    "CSRLinear",
    "ExportFile",
    "ExportInfo",
    "Preprocessed",
    "dispatch_choices",
    "export_model",
    "index_dtype",
    "kernels",
    "load_model",
    "read_export",
    "to_csr",
    "use_sparse_kernels",
]
