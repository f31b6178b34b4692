"""A cache directory: Triton's layout (layout), our manifest and fingerprint, the checks that decide whether
a server may trust it (integrity, signing, trust, verify), the one-pass scan, and the maintenance commands' plans
(prune, merge, bundle) with the lock they take."""
