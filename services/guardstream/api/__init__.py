"""The moderation API (`guardstream api`): the synchronous HTTP door beside Kafka."""
