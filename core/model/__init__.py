"""Model families in torch (one file each), their config, loaders and tokenizers."""
