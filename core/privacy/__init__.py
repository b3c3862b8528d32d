"""Differential privacy: Opacus DP-SGD, epsilon accounting and the hospital's privacy ledger.

Import the submodules (accountant, ledger, dpsgd); they are not imported here so that reading a
ledger does not load torch.
"""
