"""The HTTP contract: runs against any base URL (IMAGEGATE_BASE_URL) or a server it starts."""
