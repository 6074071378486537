"""Reading CT volumes: DICOM series (folders, zips, Enhanced CT), NIfTI, NRRD/MHA/MHD, numpy.

Everything becomes a :class:`Volume`: float32 HU ``[D, H, W]`` in canonical SPL orientation
(axis 0 inferior->superior, axis 1 anterior->posterior, axis 2 right->left) with spacing, affine
(canonical index -> LPS mm) and source metadata. See docs/io.md.
"""

from voxelfm.io.dicom import DicomSeriesInfo, find_dicom_series
from voxelfm.io.inputs import InputItem, collect_inputs
from voxelfm.io.orientation import AxisMap
from voxelfm.io.read import detect_format, read_volume
from voxelfm.io.volume import Volume, VolumeReadWarning

__all__ = [
    "Volume",
    "VolumeReadWarning",
    "read_volume",
    "detect_format",
    "find_dicom_series",
    "DicomSeriesInfo",
    "collect_inputs",
    "InputItem",
    "AxisMap",
]
