"""§5.3 of Liao et al. (2018): hyperparameter optimisation of a tanh MLP on MNIST."""
