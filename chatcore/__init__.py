"""chatcore: the only writer of the database. Persists, sequences, then publishes."""
