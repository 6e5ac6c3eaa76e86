"""gateway: holds browsers' long-lived requests and completes them from Redis pub/sub."""
