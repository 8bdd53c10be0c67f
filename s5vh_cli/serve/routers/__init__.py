"""One router per concern: queries, the library (index info, add, remove, sync), duplicates, the server itself."""
