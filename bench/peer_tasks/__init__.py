"""The peer benchmark's side of its child processes: workers, the producer, and their handling."""
