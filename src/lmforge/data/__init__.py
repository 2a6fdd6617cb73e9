"""Training data: `prepare` tokenizes a corpus into shards; `loader` serves training windows."""
