"""docqueue: a durable, asynchronous job service for document work."""
