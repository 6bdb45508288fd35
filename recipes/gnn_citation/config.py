"""The paper's setting for §5.2 (Liao et al., 2018, and its released cora.yaml / pubmed.yaml)."""

from __future__ import annotations

# PCA dimension = hidden size of the GRU (feat_dim = hidden_dim in the paper's configs).
HIDDEN = {"cora": 64, "pubmed": 16}
DATASETS = tuple(HIDDEN)
NUM_STEPS = 100  # propagation steps (num_prop)
TRUNCATE = 5  # truncate_iter: TBPTT steps and RBP / CG-RBP / Neumann-RBP iterations
PAPER_EPOCHS = 2000
TRAIN_FRAC, VAL_FRAC = 0.01, 0.49  # random split of all labelled nodes; the rest (50%) is test
PCA_SEED = 1234

# Table 1 of the paper: test accuracy (%), mean ± std over 10 seeds, by hypergrad's method names.
PAPER_TABLE1 = {
    "cora": {
        "baseline": (39.96, 3.4),
        "bptt": (24.48, 6.6),
        "tbptt": (46.55, 6.4),
        "rbp": (29.25, 3.3),
        "cg": (39.26, 6.5),
        "neumann": (46.63, 8.3),
    },
    "pubmed": {
        "baseline": (40.41, 3.1),
        "bptt": (47.05, 3.1),
        "tbptt": (53.41, 6.7),
        "rbp": (48.55, 3.4),
        "cg": (49.12, 2.9),
        "neumann": (53.56, 5.3),
    },
}
