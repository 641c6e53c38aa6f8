"""K-fold cross-validation: orchestrates training and evaluation, a floor above both."""
