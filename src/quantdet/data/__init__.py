"""Datasets: COCO reader, Pascal VOC converter, embedded default dataset, split folders.

Modules are imported directly (quantdet.data.dataset pulls in torch; the others do not),
so the corruption processes stay light.
"""
