"""Database access: engine, models, migrations. Callers own their transactions."""
