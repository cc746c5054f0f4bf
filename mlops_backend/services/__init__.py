"""The gateway's services: conversations and documents (storage, extraction, retrieval)."""
