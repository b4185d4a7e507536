"""``raydeep data prepare``: raw records (``raw_records``) tokenized (``tokenizer``) into sharded parquet
splits with manifests (``pipeline``)."""
