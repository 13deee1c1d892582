"""longbatch core: settings, the model catalogue, token estimates, errors and file helpers."""
