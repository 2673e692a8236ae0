"""The bottom layer: keypoint layouts, the faces container, geometry, metrics, files, errors."""
