"""GRU graph neural network on Cora and Pubmed (Liao et al., ICML 2018, §5.2, Table 1, Fig. 3)."""
