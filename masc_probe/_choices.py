"""The names a user can type, defined once: label sets, corruption modes, presets, probe names, model-spec prefixes.

Every module that validates one of these names, and the CLI that offers them as choices, reads them from here.
This module imports nothing, so that ``masc-probe --help`` builds its choices without importing torch.
"""

from __future__ import annotations

# Label sets a batch can carry: "corrupted" and "true" when it has both, else the single given "label".
LABEL_SETS = ("corrupted", "true", "label")
# What ProbeRunner(labels=...) accepts: "both" fits every set the batches carry.
RUNNER_LABELS = ("both", *LABEL_SETS)
# What the pipeline and the CLI accept (their data always carries true labels beside the given ones).
PIPELINE_LABELS = ("both", "corrupted", "true")

CORRUPTION_MODES = ("random", "symmetric", "shuffle", "asymmetric", "authors")

# How a run is trained and probed. "clean": eval-mode extraction, shuffled epochs, an eval pass for the stop rule,
# cross-fitted relabeling. "authors": the MASC authors' code — train-mode extraction one sample at a time, a fixed
# order every epoch, the stop rule on the running train-mode accuracy, relabeling fitted on the whole training set.
PROTOCOLS = ("clean", "authors")
# Which checkpoints/epoch-NNNN a training run keeps besides its final one: every epoch, the dense early phase then
# every checkpoint_every-th (TrainConfig's schedule), or only the final one.
CHECKPOINT_POLICIES = ("all", "dense", "final")

PRESETS = ("paper", "fast")
PIPELINE_PRESETS = ("auto", *PRESETS)  # auto: fast on the built-in datasets, paper otherwise
OPTIMIZERS = ("sgd", "adam")
MIXED_PRECISION = ("no", "fp16", "bf16")

# Probe names of masc_probe.probes.PROBES, in registry order; what each can do is its ProbeSpec there.
PROBE_NAMES = ("masc", "ncm", "linear", "velpic", "knn", "lda", "qda")
DEFAULT_PROBES = ("masc", "ncm", "linear")
# How the report's sentences and the model card name each probe: (in a sentence, in the card's list of baselines).
PROBE_TEXT = {
    "masc": ("MASC", "MASC (minimum angle to each class's subspace)"),
    "ncm": ("nearest class mean", "nearest class mean (cosine)"),
    "linear": ("the linear probe", "a linear probe (logistic regression)"),
    "velpic": ("VeLPIC", "VeLPIC (top eigenvector per class)"),
    "knn": ("kNN", "k-nearest neighbours (cosine, k=5)"),
    "lda": ("LDA", "LDA"),
    "qda": ("QDA", "QDA"),
}
# Candidate probes of label-issue detection (find_label_issues, masc-probe label-issues). QDA is left out: one d x d
# eigendecomposition per class and fold made it the bulk of the time on the MLP's 2048-wide layers (over 10 minutes on
# digits on one thread, against about one for the other three).
ISSUE_PROBES = ("masc", "ncm", "lda")
# Label-quality rankings (masc_probe.quality), confident learning's filters, and what find_label_issues flags by:
# "rank" flags the estimated noise share's worth of the lowest-ranked samples.
ISSUE_RANKINGS = ("self_confidence", "normalized_margin", "logit_margin")
CL_FILTERS = ("prune_by_noise_rate", "prune_by_class", "both", "confident_joint", "predicted_neq_given")
ISSUE_FLAGS = ("rank", *CL_FILTERS)
# Corruption modes that redraw a label uniformly over all K classes (right once in K): share = p (K - 1) / K.
UNIFORM_MODES = ("random", "authors")
# Controls a name alone asks for (ProbeRunner(controls=...), --controls): the network at its initial weights and the
# raw input; any other control is a model passed by name. Both by default.
CONTROLS = ("init", "input")

# How each network chooses its (layer, MASC subspace size) on a choosing part of the test images: against labels
# re-drawn by the run's recipe, against the true labels, or not at all (masc_probe.runner._select).
SELECT_RULES = ("noisy", "clean", "none")

# How a layer's activation becomes rows (masc_probe.layers._reduce): flatten (the paper's), the class token, the mean
# token, global average pooling of conv maps, or a per-layer automatic choice.
REDUCERS = ("flatten", "cls", "mean", "gap", "auto")

TIMM_PREFIX = "timm/"  # ours: "timm/<name>" builds timm.create_model(name)
HUB_PREFIX = "hf-hub:"  # "hf-hub:<user>/<repo>[@revision]": a published checkpoint
