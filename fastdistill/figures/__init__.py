"""Figures in the style of the paper: distilled-image grids (Figure 1), the label table
(Table 1), decoded sentences (Tables 6-7), accuracy vs distilled-set size (Figure 6), training
curves, soft-label k-NN prototypes (Figures 3-4); ``show_run`` renders a saved run.

Every figure is written as PNG and PDF with headless matplotlib (Agg for PNG).
"""

from fastdistill.figures._common import FORMATS, save_figure
from fastdistill.figures.curves import plot_accuracy_vs_samples, plot_training_curves
from fastdistill.figures.images import denormalize, plot_distilled_images
from fastdistill.figures.knn import draw_prototypes, iris_prototype_figures, plot_prototypes
from fastdistill.figures.labels import label_matrix, plot_label_table
from fastdistill.figures.metrics import plot_metrics
from fastdistill.figures.run import load_run, show_run
from fastdistill.figures.text import load_decoded, plot_decoded_text

__all__ = [
    "FORMATS",
    "denormalize",
    "draw_prototypes",
    "iris_prototype_figures",
    "label_matrix",
    "load_decoded",
    "load_run",
    "plot_accuracy_vs_samples",
    "plot_decoded_text",
    "plot_distilled_images",
    "plot_label_table",
    "plot_metrics",
    "plot_prototypes",
    "plot_training_curves",
    "save_figure",
    "show_run",
]
